"""The training pipeline: data → validation → training → evaluation → registration.

One entry point, `run.train_from_settings`, is called by the CLI (`iris-mlops train`, which is
also the DVC stage of `dvc repro`) and the Celery task (`trainer.retrain`), so all of them
train the same way; expected failures come out of it as `run.TrainingRefused`.

This package imports nothing itself: `iris-mlops validate` and `data bootstrap` use the data
modules alone and should not pay for loading MLflow and scikit-learn.
"""
