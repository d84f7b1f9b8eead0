"""The Celery application: one generic task that runs a database-backed job, and the periodic sweeper.

Tasks are thin: the message names a job id and nothing else; everything the job needs is in the
database. Settings favour never losing work over throughput: late acknowledgement, a message
redelivered when its worker is lost, one message prefetched at a time, and hard time limits.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import Celery, Task

from tre.core import jobs, sqlbroker

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

RUN_JOB = "tre.run_job"
SWEEP = "tre.sweep_jobs"
PERIODIC = "tre.enqueue_periodic"


def make_celery(app: Flask) -> Celery:
    settings = app.extensions["tre.settings"]
    db = app.extensions["tre.db"]

    class AppContextTask(Task):  # type: ignore[misc]
        abstract = True

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.import_name, task_cls=AppContextTask)
    celery.conf.update(
        broker_url=settings.broker_url,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_seconds,
        task_time_limit=settings.task_time_limit_seconds,
        task_default_queue="default",
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # Redis redelivers an unacknowledged message after this; keep it above the longest task.
        broker_transport_options={"visibility_timeout": settings.task_time_limit_seconds + 300},
        beat_schedule={
            "sweep-jobs": {"task": SWEEP, "schedule": float(settings.job_sweep_interval_seconds)},
            "periodic-jobs": {"task": PERIODIC, "schedule": 15.0},
        },
        task_always_eager=bool(app.config.get("CELERY_ALWAYS_EAGER", False)),
        task_eager_propagates=True,
    )
    if settings.broker_url.startswith(sqlbroker.URL_PREFIX):
        # The embedded broker: kombu's SQLAlchemy transport, whose consumers wait on a wake-up
        # signal instead of sleeping (ADR 0017). It knows no visibility timeout; the job table's
        # lease does that job on this broker.
        celery.conf.update(
            sqlbroker.celery_settings(
                settings.broker_url,
                wakeups=settings.broker_wakeups,
                poll_seconds=settings.broker_poll_ms / 1000,
            )
        )

    # shared=False: Celery would otherwise hand these tasks to every Celery app made later in the
    # process, and the first app's task (bound to its own database) would answer for the others.
    @celery.task(name=RUN_JOB, bind=True, shared=False)
    def run_job_task(self: Task, job_id: str) -> str:
        outcome = jobs.run_job(db, job_id, lease_seconds=settings.job_lease_seconds)
        log.info("job %s: %s", job_id, outcome)
        return outcome

    @celery.task(name=SWEEP, shared=False)
    def sweep_task() -> dict[str, int]:
        report = jobs.sweep(db, requeue_after_seconds=settings.job_requeue_after_seconds)
        return {"requeued_lost": report.requeued_lost, "resent_stale": report.resent_stale,
                "failed": report.failed}

    @celery.task(name=PERIODIC, shared=False)
    def periodic_task() -> int:
        return len(jobs.enqueue_due_periodic(db))

    def dispatch(job_id: str, queue: str) -> None:
        if celery.conf.task_always_eager:
            # Tests run jobs at once, but on another thread: the caller is still inside its
            # session's commit, and the job must not share (and close) that thread's session.
            runner = threading.Thread(target=run_job_task.apply, args=([job_id],), name=f"eager-{job_id}")
            runner.start()
            runner.join()
            return
        run_job_task.apply_async(args=[job_id], queue=queue)

    jobs.set_dispatcher(dispatch)
    from tre.core.backup_schedule import schedule as schedule_backups

    if schedule_backups(settings):  # off unless TRE_BACKUP_EVERY_HOURS is set
        log.info("scheduled backups every %d h, keeping %d", settings.backup_every_hours, settings.backup_keep)
    return celery


def prepare_to_send(celery: Celery) -> None:
    """Load the broker's transport and build the producer pool now, before the process serves.

    Celery does both on the first send, which in a web process is the first request that enqueues a
    job: importing the transport (kombu's Redis module and the client library) took 0.3 s on an idle
    machine and seconds on a busy one, and every other thread of the process that needed an import
    meanwhile waited on Python's import lock. Nothing is connected here: the pool opens its first
    connection on the first send, so a broker that is down does not stop the process starting.
    """
    if celery.conf.task_always_eager:
        return
    with celery.connection_for_write() as connection:  # a description of the broker: not connected
        connection.get_transport_cls()  # imports the transport's module
    celery.producer_pool  # noqa: B018 - the property builds the (empty) connection and producer pools
    celery.backend  # noqa: B018 - and the (disabled) result backend that every send asks for
