//! The running `mqtt` source: one task that drives rumqttc's event loop and offers readings,
//! concurrently, without ever blocking one on the other.
//!
//! The event loop is polled by a boxed future that owns it and hands it back with each event,
//! so it is never cancelled half-way and the source gets it back between events (to queue a
//! SUBSCRIBE, or acknowledgements the request channel had no room for, on its own queue).
//! Messages wait in `pending` (bounded) for their offer, one offer at a time, in arrival order;
//! while `pending` is full the event loop is not polled, so the broker's in-flight window and TCP
//! carry the agent's backpressure to the publishers. No PINGREQ goes out during such a pause
//! either: one longer than 1.5 × keep-alive lets the broker drop the connection, and the source
//! reconnects and gets the unacknowledged messages again.
//!
//! Acknowledgements are tied to the connection a message came on (`generation`): after a
//! reconnect, a late PUBACK would acknowledge whatever the broker resent under that packet id,
//! so it is dropped instead, and with a resumed session the messages of the old connection
//! still waiting for their offer are dropped too, because the broker sends them again.

use super::route::Router;
use super::{subscriptions, MqttSource};
use crate::source::{Offered, SinkClosed, SourceContext, SourceError, SourceReading};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, NetworkOptions, Outgoing, Packet, Publish, QoS,
    Request, StateError, Subscribe, SubscribeFilter, SubscribeReasonCode, Unsubscribe,
};
use sluice_proto::backoff::Backoff;
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Salt of the reconnect-backoff RNG (`env.rng(source_idx, BACKOFF_SALT)`).
const BACKOFF_SALT: u64 = 0x6d71_7474_6261_636b; // "mqttback"

/// The event loop, polled once (after an optional wait), handed back with what it produced.
type PollFuture = Pin<Box<dyn Future<Output = (EventLoop, Result<Event, ConnectionError>)> + Send>>;

/// The one piece of work in progress with the agent: an offer (of message `id`) or a flush.
type WorkFuture<'a> = Pin<Box<dyn Future<Output = Done> + Send + 'a>>;

/// What a piece of work came to.
enum Done {
    /// Message `id` was offered; the agent answered.
    Offered(u64, Result<Offered, SinkClosed>),
    /// Everything accepted so far is durable.
    Flushed(Result<(), SinkClosed>),
}

/// Where a message that owes the broker an acknowledgement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// Waiting for (or in) its offer.
    Offering,
    /// Accepted into the spool, not yet durable (with `ack_after = "durable"`).
    NeedsFlush,
    /// Handled: its PUBACK may go once every earlier message's has.
    Ready,
}

fn poll_after(mut eventloop: EventLoop, delay: Duration) -> PollFuture {
    Box::pin(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let result = eventloop.poll().await;
        (eventloop, result)
    })
}

/// What is owed to the broker for one QoS 1 (or 2) message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AckToken {
    pkid: u16,
    qos: QoS,
    /// The connection the message came on.
    generation: u64,
}

/// A message turned into a reading, waiting for its offer.
#[derive(Debug)]
struct Pending {
    /// Arrival number; names its entry in `Session::owed`.
    id: u64,
    reading: SourceReading,
    ack: Option<AckToken>,
}

/// Runs the source until the agent stops; see the module doc.
pub(super) async fn run(source: &MqttSource, context: &SourceContext) -> Result<(), SourceError> {
    let (client, mut eventloop) =
        AsyncClient::new(source.options.clone(), source.requests_queued_max);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(source.connect_timeout_s);
    eventloop.set_network_options(network);
    let rng = context.env.rng(context.source_idx as u64, BACKOFF_SALT);
    let mut session = Session {
        name: &source.name,
        router: &source.router,
        context,
        client,
        backoff: Backoff::new(source.backoff_initial, source.backoff_max, rng),
        generation: 0,
        connected: false,
        subscribed: false,
        unsubscribing: 0,
        pending: VecDeque::with_capacity(source.messages_pending_max),
        pending_max: source.messages_pending_max,
        owed: VecDeque::new(),
        owed_max: source.messages_pending_max + usize::from(source.inflight_max),
        next_id: 0,
        ack_after_durable: source.ack_after_durable,
        acks_unsent: Vec::new(),
    };
    let (host, port) = source.options.broker_address();
    info!(
        source = source.name,
        host,
        port,
        client_id = source.options.client_id(),
        "mqtt source starting"
    );
    session.drive(eventloop).await;
    info!(
        source = source.name,
        "mqtt source stopping: the agent is stopping"
    );
    Ok(())
}

struct Session<'a> {
    name: &'a str,
    router: &'a Router,
    context: &'a SourceContext,
    client: AsyncClient,
    backoff: Backoff,
    /// Counts CONNACKs: the connection messages and acknowledgements belong to.
    generation: u64,
    /// Between a CONNACK and the next connection error.
    connected: bool,
    /// Whether this run subscribed yet (it does at its first CONNACK, whatever the session).
    subscribed: bool,
    /// Stale filters whose UNSUBACK has not arrived yet.
    unsubscribing: usize,
    pending: VecDeque<Pending>,
    pending_max: usize,
    /// Messages that owe the broker a PUBACK, in arrival order (MQTT acknowledges QoS 1 in the
    /// order of arrival): `(id, token, where it is)`.
    owed: VecDeque<(u64, AckToken, Owed)>,
    /// Most messages owing a PUBACK before the source stops reading from the broker.
    owed_max: usize,
    next_id: u64,
    /// PUBACK only once the spool made the reading durable (`ack_after = "durable"`).
    ack_after_durable: bool,
    /// Acknowledgements the request channel had no room for; moved onto the event loop's own
    /// queue when it comes back with its next event. At most one per message taken since then.
    acks_unsent: Vec<Request>,
}

impl<'a> Session<'a> {
    /// The loop: offers and event-loop polls run side by side; returns when the sink closes.
    async fn drive(&mut self, eventloop: EventLoop) {
        let context: &'a SourceContext = self.context;
        let mut polling = poll_after(eventloop, Duration::ZERO);
        let mut working: Option<WorkFuture<'a>> = None;
        loop {
            if working.is_none() {
                working = self.next_work(context);
            }
            let room = self.pending.len() < self.pending_max && self.owed.len() < self.owed_max;
            tokio::select! {
                biased;
                done = until_done(&mut working) => {
                    working = None;
                    match done {
                        Done::Offered(id, Ok(offered)) => self.offered(id, &offered),
                        Done::Flushed(Ok(())) => self.flushed(),
                        Done::Offered(_, Err(SinkClosed)) | Done::Flushed(Err(SinkClosed)) => return,
                    }
                }
                (mut eventloop, result) = &mut polling, if room => {
                    let delay = self.handle(&mut eventloop, result);
                    polling = poll_after(eventloop, delay);
                }
            }
        }
    }

    /// The next offer, or a flush when readings wait for durability and either nothing else
    /// waits or enough of them do.
    fn next_work(&mut self, context: &'a SourceContext) -> Option<WorkFuture<'a>> {
        let n_unflushed = self
            .owed
            .iter()
            .filter(|(_, _, owed)| *owed == Owed::NeedsFlush)
            .count();
        if n_unflushed > 0 && (self.pending.is_empty() || n_unflushed >= self.pending_max) {
            return Some(Box::pin(async move {
                Done::Flushed(context.sink.flush().await)
            }));
        }
        let pending = self.pending.pop_front()?;
        Some(Box::pin(async move {
            Done::Offered(pending.id, context.sink.offer(pending.reading).await)
        }))
    }

    /// Message `id`'s offer was answered.
    fn offered(&mut self, id: u64, offered: &Offered) {
        let state = match offered {
            Offered::Accepted { .. } if self.ack_after_durable => Owed::NeedsFlush,
            _ => Owed::Ready,
        };
        if let Some(entry) = self.owed.iter_mut().find(|(i, _, _)| *i == id) {
            entry.2 = state;
        }
        self.release();
    }

    /// Everything accepted so far is durable (one piece of work at a time: no offer completed
    /// during the flush).
    fn flushed(&mut self) {
        for entry in self.owed.iter_mut() {
            if entry.2 == Owed::NeedsFlush {
                entry.2 = Owed::Ready;
            }
        }
        self.release();
    }

    /// Sends the PUBACKs of the handled messages at the front, in arrival order.
    fn release(&mut self) {
        while let Some((_, token, Owed::Ready)) = self.owed.front().copied() {
            self.owed.pop_front();
            self.ack(Some(token));
        }
    }

    /// Handles one event-loop result; returns how long to wait before polling again.
    fn handle(
        &mut self,
        eventloop: &mut EventLoop,
        result: Result<Event, ConnectionError>,
    ) -> Duration {
        let delay = match result {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                self.on_connected(eventloop, connack.session_present);
                Duration::ZERO
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                self.on_publish(publish);
                Duration::ZERO
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                self.on_suback(&suback.return_codes);
                Duration::ZERO
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                self.on_unsuback();
                Duration::ZERO
            }
            Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => {
                debug!(source = self.name, pkid, "acknowledged");
                Duration::ZERO
            }
            Ok(_) => Duration::ZERO,
            Err(error) => return self.on_error(eventloop, &error),
        };
        eventloop.pending.extend(self.acks_unsent.drain(..));
        delay
    }

    fn on_connected(&mut self, eventloop: &mut EventLoop, session_present: bool) {
        self.generation += 1;
        self.connected = true;
        // The acknowledgements owed on an older connection can no longer be sent (the broker
        // sends those messages again): forget them, so they hold nothing up.
        self.owed.clear();
        self.backoff.reset();
        if session_present {
            // The broker sends every unacknowledged message of the session again: drop the
            // copies still waiting here. QoS 0 messages are not sent again, so they stay.
            let before = self.pending.len();
            self.pending.retain(|p| p.ack.is_none());
            let n_dropped = before - self.pending.len();
            if n_dropped > 0 {
                debug!(
                    source = self.name,
                    n_dropped, "dropped messages the broker sends again"
                );
            }
        }
        info!(
            source = self.name,
            session_present, "connected to the mqtt broker"
        );
        if !session_present || !self.subscribed {
            let filters = self
                .router
                .filters()
                .map(|f| SubscribeFilter::new(f.to_owned(), QoS::AtLeastOnce));
            eventloop
                .pending
                .push_back(Request::Subscribe(Subscribe::new_many(filters)));
            if !self.subscribed {
                self.unsubscribe_stale(eventloop);
            }
            self.subscribed = true;
        }
    }

    /// Unsubscribes the filters an older configuration left in the persistent session (see
    /// `subscriptions.rs`).
    fn unsubscribe_stale(&mut self, eventloop: &mut EventLoop) {
        let state_dir = &self.context.state_dir;
        let current: BTreeSet<String> = self.router.filters().map(str::to_owned).collect();
        let remembered = subscriptions::load(state_dir).unwrap_or_else(|error| {
            warn!(source = self.name, %error, "forgetting the remembered subscriptions");
            BTreeSet::new()
        });
        let stale: Vec<String> = remembered.difference(&current).cloned().collect();
        let union: BTreeSet<String> = remembered.union(&current).cloned().collect();
        if let Err(error) = subscriptions::store(state_dir, &union) {
            warn!(source = self.name, %error, "cannot remember the subscriptions");
        }
        for filter in &stale {
            info!(
                source = self.name,
                filter, "unsubscribing a filter the configuration dropped"
            );
            eventloop
                .pending
                .push_back(Request::Unsubscribe(Unsubscribe::new(filter.clone())));
        }
        self.unsubscribing = stale.len();
        if stale.is_empty() {
            self.remember(&current);
        }
    }

    fn remember(&self, filters: &BTreeSet<String>) {
        if let Err(error) = subscriptions::store(&self.context.state_dir, filters) {
            warn!(source = self.name, %error, "cannot remember the subscriptions");
        }
    }

    fn on_unsuback(&mut self) {
        self.unsubscribing = self.unsubscribing.saturating_sub(1);
        if self.unsubscribing == 0 {
            let current: BTreeSet<String> = self.router.filters().map(str::to_owned).collect();
            self.remember(&current);
        }
    }

    fn on_publish(&mut self, publish: Publish) {
        let ack = (publish.qos != QoS::AtMostOnce).then_some(AckToken {
            pkid: publish.pkid,
            qos: publish.qos,
            generation: self.generation,
        });
        let id = self.next_id;
        self.next_id += 1;
        let sink = &self.context.sink;
        let wall = self.context.env.clock.wall();
        let owed = match self.router.route(&publish.topic, &publish.payload, wall) {
            Ok(reading) => {
                sink.count_read();
                self.pending.push_back(Pending { id, reading, ack });
                Owed::Offering
            }
            Err(rejection) => {
                sink.reject(rejection.reason, rejection.detail);
                Owed::Ready
            }
        };
        if let Some(token) = ack {
            self.owed.push_back((id, token, owed));
        }
        self.release();
    }

    fn on_suback(&self, codes: &[SubscribeReasonCode]) {
        for (filter, code) in self.router.filters().zip(codes) {
            match code {
                SubscribeReasonCode::Success(QoS::AtMostOnce) => warn!(
                    source = self.name,
                    filter,
                    "the broker granted QoS 0 only: messages are lost while the agent is away"
                ),
                SubscribeReasonCode::Success(_) => debug!(source = self.name, filter, "subscribed"),
                SubscribeReasonCode::Failure => error!(
                    source = self.name,
                    filter,
                    "the broker refused the subscription (check its ACL): no messages from this filter"
                ),
            }
        }
    }

    fn on_error(&mut self, eventloop: &mut EventLoop, error: &ConnectionError) -> Duration {
        self.connected = false;
        // Acknowledgements of the lost connection would acknowledge the wrong messages on the
        // next one (rumqttc drops those in its channel for the same reason).
        self.acks_unsent.clear();
        eventloop
            .pending
            .retain(|r| !matches!(r, Request::PubAck(_)));
        let delay = self.backoff.next_delay();
        let n_failures = self.backoff.n_failures();
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        if let ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(bytes),
        )) = error
        {
            error!(
                source = self.name, bytes, delay_ms,
                "a message is larger than packet_bytes_max; the broker will send it again on every \
                 reconnect: raise packet_bytes_max or lower the broker's message_size_limit"
            );
        } else {
            warn!(source = self.name, %error, n_failures, delay_ms, "mqtt connection failed; reconnecting");
        }
        delay
    }

    /// Sends the acknowledgement a message owes, if it still belongs to this connection.
    fn ack(&mut self, ack: Option<AckToken>) {
        let Some(token) = ack else { return };
        if !self.connected || token.generation != self.generation {
            debug!(
                source = self.name,
                pkid = token.pkid,
                "not acknowledged: its connection is gone"
            );
            return;
        }
        let mut stub = Publish::new("", token.qos, Vec::new());
        stub.pkid = token.pkid;
        if let Err(
            rumqttc::ClientError::Request(request) | rumqttc::ClientError::TryRequest(request),
        ) = self.client.try_ack(&stub)
        {
            self.acks_unsent.push(request);
        }
        debug_assert!(self.acks_unsent.len() <= self.pending_max + 2);
    }
}

/// Waits for the future in `slot`, or forever when there is none.
async fn until_done<T>(slot: &mut Option<Pin<Box<dyn Future<Output = T> + Send + '_>>>) -> T {
    match slot {
        Some(future) => future.as_mut().await,
        None => std::future::pending().await,
    }
}
