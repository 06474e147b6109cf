"""Package discovery for the folder-to-package mapping declared in setup.cfg.

`find_packages` cannot follow `package_dir` renames, so the sub-packages of `jobs/` (p13n.*) and
`models/` (p13n.models.*) are listed here; everything else is configured in setup.cfg.
"""

from setuptools import find_packages, setup

packages = ["p13n"] + [f"p13n.{p}" for p in find_packages("jobs")]
packages += ["p13n.models"] + [f"p13n.models.{p}" for p in find_packages("models")]
package_dir = {"p13n": "jobs", "p13n.models": "models"}
setup(packages=packages, package_dir=package_dir)
