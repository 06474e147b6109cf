"""Package discovery for the folder-to-package mapping declared in setup.cfg.

`find_packages` cannot follow `package_dir` renames, so the sub-packages of `jobs/` (p13n.*) and
`models/` (p13n.models.*) are listed here; everything else is configured in setup.cfg. The folders
the code reads at run time (`conf/`, `dags/`, `sql/`, `expectations/`) ship inside the wheel as
`p13n/_home/<folder>`, so an installed p13n runs outside a checkout (`p13n.config.HOME`).
"""

from setuptools import find_packages, setup

HOME_FOLDERS = ("conf", "dags", "sql", "expectations")

packages = ["p13n"] + [f"p13n.{p}" for p in find_packages("jobs")]
packages += ["p13n.models"] + [f"p13n.models.{p}" for p in find_packages("models")]
packages += [f"p13n._home.{d}" for d in HOME_FOLDERS]
package_dir = {"p13n": "jobs", "p13n.models": "models"} | {f"p13n._home.{d}": d for d in HOME_FOLDERS}
package_data = {f"p13n._home.{d}": ["*", "**/*"] for d in HOME_FOLDERS}
setup(
    packages=packages,
    package_dir=package_dir,
    package_data=package_data,
    exclude_package_data={"": ["__pycache__/*", "*.pyc"]},
)
