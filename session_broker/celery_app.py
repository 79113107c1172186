"""The one Celery app (``celery -A session_broker.celery_app ...``): JSON only, late ack with a
prefetch of one, our own requeue on a lost worker, task events on demand, every name under
the tenant's key prefix (``TenantMailbox`` for the remote-control queues). Producers never
call ``apply_async``: ``core.messages`` builds the message the submit script pushes.
The reasons for each setting: docs/design.md.
"""

from __future__ import annotations

import functools

from celery import Celery
from celery.app.control import Control
from celery.worker import consumer as celery_consumer
from kombu import Queue, pidbox
from kombu.transport import TRANSPORT_ALIASES

from session_broker.core import sentinel
from session_broker.core.config import Settings, get_settings
from session_broker.core.keys import Keys
from session_broker.core.spawn import worker_package
from session_broker.core.urls import split_tls_options

# kombu's Redis transport, hardened against malformed envelopes (see transport.py)
TRANSPORT_ALIASES["redis"] = TRANSPORT_ALIASES["rediss"] = "session_broker.core.transport:Transport"
TRANSPORT_ALIASES["sentinel"] = "session_broker.core.transport:SentinelTransport"


class TenantMailbox(pidbox.Mailbox):
    """kombu's remote-control mailbox with its queues named by ``Keys`` (``keys`` is set by
    ``make_app``): kombu names them ``<node>.<namespace>.pidbox`` and ``<oid>.reply...``,
    which no prefix rule could match without matching other tenants' names too."""

    keys: Keys
    reply_exchange_fmt = "%s.reply"  # Keys.reply_exchange: <control_exchange>.reply

    def _queue(self, name: str, exchange, expires, ttl, **kw) -> Queue:
        return Queue(
            name,
            exchange=exchange,
            durable=self.queue_durable,
            exclusive=self.queue_exclusive,
            auto_delete=not self.queue_durable,
            expires=expires,
            message_ttl=ttl,
            **kw,
        )

    def get_queue(self, hostname):
        return self._queue(
            self.keys.mailbox_queue(hostname), self.exchange, self.queue_expires, self.queue_ttl
        )

    def get_reply_queue(self):
        return self._queue(
            self.keys.reply_queue(self.oid),
            self.reply_exchange,
            self.reply_queue_expires,
            self.reply_queue_ttl,
            routing_key=self.oid,
        )


class Consumer(celery_consumer.Consumer):
    """Celery's worker consumer, reconnecting to the broker within 2 s of its return.

    kombu retries a lost broker at 2, 6, 12, 20, 30 s... (hard-coded defaults): after a
    Sentinel failover (a new master within seconds) or a Redis restart a worker sat idle up
    to half a minute longer than the outage. Here every retry is at most 2 s apart.
    """

    def ensure_connected(self, conn):
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_start=0.25, interval_step=0.5, interval_max=2
        )
        return super().ensure_connected(conn)


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    url, tls = split_tls_options(settings.url)
    high_availability = {}  # Sentinel: kombu's and Celery's own sentinel support, our channel
    if sentinel.is_sentinel(settings.url):
        url, high_availability = sentinel.kombu_url(settings.url), sentinel.kombu_options(settings.url)
    keys = Keys(settings.key_prefix)
    worker = worker_package()  # tasks (a checkout) or session_broker_tasks (installed)
    mailbox = type("TenantMailbox", (TenantMailbox,), {"keys": keys})
    control = type("TenantControl", (Control,), {"Mailbox": mailbox})
    app = Celery("session_broker", broker=url, backend=url, set_as_current=True, control=control)
    transport = {
        **high_availability,
        # kombu's bookkeeping and pub/sub channels under the tenant's prefix (see core/keys.py)
        "unacked_key": keys.unacked,
        "unacked_index_key": keys.unacked_index,
        "unacked_mutex_key": keys.unacked_mutex,
        "keyprefix_binding_deadlines": keys.binding_deadlines,  # transport.Channel accepts it
        "fanout_prefix": keys.fanout_prefix,
        "visibility_timeout": settings.visibility_timeout,
        # BRPOP timeout: a consumer picks up a new queue list (a pin change) after at most this
        "polling_interval": 0.1,
        "health_check_interval": 5,
        "socket_keepalive": True,
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_expires=settings.result_ttl,
        result_extended=False,
        task_acks_late=True,
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        task_send_sent_event=False,
        task_track_started=False,
        task_create_missing_queues=True,
        task_default_queue=keys.default_queue,
        control_exchange=keys.control_exchange,
        event_exchange=keys.event_exchange,
        event_queue_prefix=keys.event_exchange,
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        broker_transport_options=transport,
        result_backend_transport_options={
            "retry_policy": {"max_retries": 20},
            "global_keyprefix": keys.result_prefix,
            **high_availability,
        },
        redis_backend_health_check_interval=5,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_enable_remote_control=True,
        worker_consumer="session_broker.celery_app:Consumer",
        imports=[f"{worker}.celery_tasks", f"{worker}.executor"],
        timezone="UTC",
    )
    if tls:
        app.conf.broker_use_ssl = dict(tls)
        app.conf.redis_backend_use_ssl = dict(tls)
    return app


app = make_app()
