"""Scoring: a loaded model, and the micro-batcher that scores concurrent requests in one call.

Why batch: scikit-learn's cost per call (input checks, one pass per pipeline step) is about the
same for one row as for a thousand, so thirty-two concurrent one-row requests scored in one
call cost about what one does. The batcher does what Triton's dynamic batcher does with a
queue delay of zero: requests queue while the function is busy, and when it frees up everything
queued for it is scored together. A lone request waits for nothing, and under load the batch
grows with the load by itself, so no timing model is needed. Beyond `max_queued_rows` waiting
rows, a request is refused at once (503) instead of joining a queue it would leave too late.
The batcher knows no model: it batches calls of any function of rows.

A model with a numpy scorer (`iris_predictor.linear`, the default pipeline) needs none of
this: its call costs less than the hand-off to the thread, so the prediction core
(`iris_predictor.core`) scores it on the event loop and never asks the batcher.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from iris_predictor.linear import FastPath, Scorer, check_linear_scorer
from iris_shared.drift import ReferenceProfile
from iris_shared.http import Overloaded
from iris_shared.schemas import FEATURE_NAMES, ServedModel

# Models fitted on a DataFrame remember its column names and warn on every call with an array.
# LoadedModel checks at load that those names are FEATURE_NAMES in that order, and the arrays
# are built in that order, so the warning can only ever say what was already checked.
warnings.filterwarnings(
    "ignore", message="X does not have valid feature names", category=UserWarning
)


class IncompatibleModelError(Exception):
    """The model does not take the four measurements in FEATURE_NAMES order."""


@dataclass(frozen=True)
class LoadedModel:
    """A fitted scikit-learn classifier together with what the registry says about it."""

    model: Any
    info: ServedModel
    # The training data's profile, for drift scores; None for versions logged without one.
    profile: ReferenceProfile | None = None
    # numpy arithmetic equal to the model's predict_proba where there is one (linear.py), and
    # why not where the model is one it was made for.
    fast_path: FastPath = field(init=False, repr=False, compare=False, default=FastPath(None))
    # `predict_proba`, bound once: the micro-batcher scores together the calls of one function.
    batch_scorer: Scorer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = getattr(self.model, "feature_names_in_", None)
        if names is not None and tuple(names) != FEATURE_NAMES:
            raise IncompatibleModelError(
                f"The model expects columns {list(names)}, not {list(FEATURE_NAMES)}."
            )
        if not hasattr(self.model, "classes_"):
            raise IncompatibleModelError("The model is not a fitted classifier (no classes_).")
        object.__setattr__(self, "fast_path", check_linear_scorer(self.model))
        object.__setattr__(self, "batch_scorer", self.predict_proba)

    @property
    def fast_scorer(self) -> Scorer | None:
        return self.fast_path.scorer

    @property
    def scorer_name(self) -> str:
        """What scores this model: "numpy" (linear.py) or "scikit-learn"."""
        return "numpy" if self.fast_path.scorer is not None else "scikit-learn"

    @property
    def version(self) -> str:
        return self.info.version

    @cached_property
    def classes(self) -> tuple[str, ...]:
        return tuple(str(label) for label in self.model.classes_)

    def with_source(self, source: str) -> LoadedModel:
        return replace(self, info=self.info.model_copy(update={"source": source}))

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities for rows of the four measurements (columns in FEATURE_NAMES order).

        A classifier without probabilities gives 1.0 to the class it predicts.
        """
        if self.fast_scorer is not None:
            scored: np.ndarray = self.fast_scorer(rows)
            return scored
        if hasattr(self.model, "predict_proba"):
            probabilities: np.ndarray = np.asarray(self.model.predict_proba(rows), np.float64)
            return probabilities
        labels = np.asarray(self.model.predict(rows))
        one_hot: np.ndarray = labels[:, None] == np.asarray(self.model.classes_)[None, :]
        return one_hot.astype(np.float64)


@dataclass
class _Waiting:
    function: Scorer
    rows: np.ndarray
    answer: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Scores the rows of concurrent calls of one function together, in one thread off the
    event loop. Requests are batched by function object: pass the same one for requests that
    may share a call (a model's `batch_scorer`)."""

    def __init__(
        self, max_queued_rows: int, on_call: Callable[[int], None] = lambda _requests: None
    ) -> None:
        self.max_queued_rows = max_queued_rows
        # Told how many requests each call scores: how well batching works.
        self.on_call = on_call
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._queue: list[_Waiting] = []
        self._queued_rows = 0
        self._drain_task: asyncio.Task[None] | None = None

    async def score(self, function: Scorer, rows: np.ndarray) -> np.ndarray:
        """`function(rows)`, computed with the rows of whatever else waits for `function`; the
        function takes an (n, k) array and answers one row per input row."""
        if self._queued_rows + len(rows) > self.max_queued_rows:
            raise Overloaded(
                f"{self._queued_rows} rows are already waiting for the model; retry in a moment."
            )
        loop = asyncio.get_running_loop()
        waiting = _Waiting(function, rows, loop.create_future())
        self._queue.append(waiting)
        self._queued_rows += len(rows)
        if self._drain_task is None:
            self._drain_task = loop.create_task(self._drain())
        return await waiting.answer

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                self._queued_rows -= sum(len(w.rows) for w in batch)
                for group in _by_function(batch):
                    await self._score_group(loop, group)
        finally:
            self._drain_task = None

    async def _score_group(
        self, loop: asyncio.AbstractEventLoop, group: Sequence[_Waiting]
    ) -> None:
        rows = group[0].rows if len(group) == 1 else np.concatenate([w.rows for w in group])
        self.on_call(len(group))
        try:
            answers = await loop.run_in_executor(self._executor, group[0].function, rows)
        except Exception as exc:
            for waiting in group:
                if not waiting.answer.done():
                    waiting.answer.set_exception(exc)
            return
        start = 0
        for waiting in group:
            end = start + len(waiting.rows)
            # A request whose client went away was cancelled: nobody waits for its answer.
            if not waiting.answer.done():
                waiting.answer.set_result(answers[start:end])
            start = end

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _by_function(batch: list[_Waiting]) -> list[list[_Waiting]]:
    """Split a batch by function, keeping order: a swap can fall between two queued requests."""
    groups: dict[int, list[_Waiting]] = {}
    for waiting in batch:
        groups.setdefault(id(waiting.function), []).append(waiting)
    return list(groups.values())
