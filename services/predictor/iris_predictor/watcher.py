"""Follow the alias: check MLflow every few seconds (or when a webhook says so) and swap models.

A new version is downloaded and loaded completely before `ModelHolder.swap` replaces the one
reference requests read, so there is no moment without a model and no failed request. A
failure keeps the model already served and is retried at the next check.

The challenger is followed the same way by a second watcher (`answers=False`): it never makes
the process ready, has no local copy to fall back on, and is dropped when its alias goes.

In a server of several worker processes, one of them (`WorkerPeers.lead`) asks MLflow at every
interval and nudges the others as soon as it sees the alias move; the others ask only then, or
after FOLLOWER_INTERVALS intervals in case a nudge went astray. The registry answers one
process per server, not every worker.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from iris_predictor.inference import LoadedModel
from iris_predictor.metrics import PredictorMetrics
from iris_predictor.registry_alias import (
    ModelLoadError,
    RegistryAlias,
    RegistryUnavailableError,
)
from iris_predictor.serving import ModelHolder
from iris_shared.schemas import LoadFailure
from iris_shared.server import WorkerPeers, freeze_long_lived_objects

logger = logging.getLogger(__name__)

# How often a sleeping watcher looks whether another worker process was told to check now.
_NUDGE_TICK_S = 0.25
# A worker that does not lead the polling checks by itself once in this many poll intervals.
FOLLOWER_INTERVALS = 10


class ModelWatcher:
    def __init__(
        self,
        registry: RegistryAlias,
        holder: ModelHolder,
        metrics: PredictorMetrics,
        poll_interval_s: float,
        peers: WorkerPeers,
        *,
        answers: bool = True,
    ) -> None:
        self.answers = answers
        self.registry = registry
        self.holder = holder
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.peers = peers
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Repeated states are logged once, not every few seconds.
        self._last_state: str | None = None
        self._seen_nudge = peers.nudge_stamp()
        # The last version the other workers were told to load (a version that fails to load
        # is announced once, not at every check).
        self._announced_version: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"watcher-{self.registry.alias}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def check_soon(self) -> None:
        """Check the alias now in every worker process, not at the next tick (webhooks)."""
        self.peers.nudge()
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.check()
            except Exception:
                # The watcher must outlive any surprise, or the service stops following the alias.
                logger.exception("Unexpected error while checking the model alias")
                self.metrics.reload_failures.inc()
            self._report_age()
            self._sleep_until_next_check()

    def _report_age(self) -> None:
        current = self.holder.current
        if current is not None and current.info.created_at is not None:
            age = datetime.now(UTC) - current.info.created_at
            self.metrics.model_age.labels(self.registry.alias).set(age.total_seconds())

    def _sleep_until_next_check(self) -> None:
        """Wait a poll interval (FOLLOWER_INTERVALS of them in a worker that does not lead),
        or less when woken here, nudged by another worker, or made the leader."""
        leading = self._leads()
        intervals = 1 if leading else FOLLOWER_INTERVALS
        deadline = time.monotonic() + self.poll_interval_s * intervals
        while (remaining := deadline - time.monotonic()) > 0:
            if self._wake.wait(min(remaining, _NUDGE_TICK_S)) or self._nudged():
                break
            if not leading and self._leads():
                break  # the leader is gone: this worker polls from now on
        self._wake.clear()

    def _leads(self) -> bool:
        return self.peers.lead(f"poll-{self.registry.alias}")

    def _nudged(self) -> bool:
        stamp = self.peers.nudge_stamp()
        if stamp == self._seen_nudge:
            return False
        self._seen_nudge = stamp
        return True

    def _tell_followers(self) -> None:
        """The alias moved (or MLflow came back): the other workers check now, not in
        FOLLOWER_INTERVALS intervals."""
        if self._leads():
            self.peers.nudge()

    def _log_state(self, state: str, level: int, message: str, **extra: object) -> None:
        if state != self._last_state:
            logger.log(level, message, extra=extra)
            self._last_state = state

    def check(self) -> None:
        """Compare the alias with the served version and swap when they differ."""
        registry = self.registry
        current = self.holder.current
        try:
            ref = registry.resolve()
        except RegistryUnavailableError:
            self.metrics.reload_failures.inc()
            if current is None and self.answers:
                self._fall_back_to_cache("MLflow is unreachable")
            elif current is not None:
                self._log_state(
                    "unreachable",
                    logging.WARNING,
                    "MLflow is unreachable; keeping the served model",
                    model=registry.name,
                    version=current.version,
                    tracking_uri=registry.tracking_uri,
                )
            return
        if ref is None:
            self._loaded_fine()
            if current is not None and not self.answers:
                # No challenger any more: nothing to compare with.
                self.holder.swap(None)
                self.metrics.model_dropped(registry.alias)
                self._tell_followers()
                self._log_state(
                    "alias-gone", logging.INFO, "The alias is gone", alias=registry.alias
                )
            elif current is None:
                self._log_state(
                    "no-alias",
                    logging.WARNING if self.answers else logging.INFO,
                    "No model version has the alias yet; waiting for one",
                    model=registry.name,
                    alias=registry.alias,
                )
            else:
                self._log_state(
                    "alias-gone",
                    logging.WARNING,
                    "The alias no longer exists; keeping the served model",
                    model=registry.name,
                    alias=registry.alias,
                    version=current.version,
                )
            return
        if current is not None and current.version == ref.version:
            self._loaded_fine()
            if current.info.source != "registry":
                # MLflow is back and still points at the version served from the local copy.
                self.holder.swap(current.with_source("registry"))
                self._tell_followers()
            self._log_state("serving", logging.INFO, "Serving the alias", version=ref.version)
            return
        if ref.version != self._announced_version:
            # Before loading, so that every worker loads at once rather than one after another.
            self._announced_version = ref.version
            self._tell_followers()
        try:
            new = registry.load(ref)
        except (ModelLoadError, RegistryUnavailableError) as exc:
            self._load_failed(ref.version, str(exc))
            if current is None and self.answers:
                self._fall_back_to_cache("the registry's version failed to load")
            return
        self._loaded_fine()
        self._install(new, previous=current)

    def _load_failed(self, version: str, reason: str) -> None:
        failure = self.holder.load_failure
        if failure is None or failure.version != version:
            # Logged with its traceback once per version, not at every check.
            logger.exception(
                "Unable to load model", extra={"model": self.registry.name, "version": version}
            )
            failure = LoadFailure(version=version, reason=reason, since=datetime.now(UTC))
            self.holder.load_failure = failure
        self.metrics.reload_failures.inc()
        if self.answers:
            self.metrics.load_failing.set(1)

    def _loaded_fine(self) -> None:
        if self.holder.load_failure is not None:
            self.holder.load_failure = None
            if self.answers:
                self.metrics.load_failing.set(0)

    def _install(self, new: LoadedModel, previous: LoadedModel | None) -> None:
        if previous is None:
            # Loading the first model imports scikit-learn's model modules: freeze those too.
            freeze_long_lived_objects()
        self.holder.swap(new)
        self.metrics.model_served(new.info.name, new.version, new.info.alias, answers=self.answers)
        report_fast_path(new, self.metrics)
        if self.answers:
            self.peers.mark_ready()
        if new.info.source == "registry":
            self.metrics.reloads.inc()
        self._last_state = "serving"
        logger.info(
            "Serving model",
            extra={
                "model": new.info.name,
                "version": new.version,
                "previous_version": previous.version if previous is not None else None,
                "source": new.info.source,
            },
        )

    def _fall_back_to_cache(self, reason: str) -> None:
        cached = self.registry.load_cached()
        if cached is None:
            self._log_state(
                "no-model-no-cache",
                logging.WARNING,
                "No model to serve and no local copy of one; waiting",
                model=self.registry.name,
                reason=reason,
                tracking_uri=self.registry.tracking_uri,
            )
            return
        logger.warning(
            "Serving the local copy of the model",
            extra={
                "model": cached.info.name,
                "version": cached.version,
                "source": "local-cache",
                "reason": reason,
            },
        )
        self._install(cached, previous=None)


def report_fast_path(model: LoadedModel, metrics: PredictorMetrics) -> None:
    """Say, in the log and a metric, when the numpy scorer was made for `model` but does not
    match it: scored by scikit-learn, the predictor answers about half as many requests."""
    mismatch = model.fast_path.mismatch
    metrics.scorer_checked(model.info.alias, mismatch is not None)
    if mismatch is not None:
        logger.warning(
            "The numpy scorer does not match scikit-learn; scoring with scikit-learn",
            extra={
                "model": model.info.name,
                "version": model.version,
                "alias": model.info.alias,
                "mismatch": mismatch,
            },
        )
