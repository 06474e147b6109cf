"""Airflow's local settings for p13n: imported by every Airflow process at start (`p13n.orchestration`
puts this folder on the PYTHONPATH of the Airflow it runs).

The LocalExecutor's workers are forked from the scheduler, and each task's process is forked from its
worker: what the scheduler has imported, every task starts with. Importing Great Expectations, MLflow,
scikit-learn and the Spark Connect client costs a task 10-25 s on 2 busy cores; imported once here, a
task's fixed cost is Airflow's own. Only the scheduler preloads (`airflow.preload_modules`).
"""

import sys

if sys.argv[1:2] == ["scheduler"]:
    from p13n.orchestration import preload_task_modules

    preload_task_modules()
