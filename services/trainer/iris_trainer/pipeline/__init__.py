"""The training pipeline: data → validation → training → evaluation → registration.

One entry point, `run_training`, is called by the CLI (`iris-mlops train`), the DVC stage
(`dvc repro`) and the Celery task (`trainer.retrain`), so all three train the same way.
"""

from iris_trainer.pipeline.run import run_training

__all__ = ["run_training"]
