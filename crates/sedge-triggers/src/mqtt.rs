//! The connection to one MQTT broker: subscribes the functions' topic
//! filters, queues each message as a call, acknowledges it only once the
//! call is on disk, publishes answers to reply topics, and reconnects with
//! back-off when the broker goes away.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use sedge_queue::{NewCall, QueueError};

use crate::backoff::Reconnect;
use crate::{Subscription, Triggers};

/// Messages being stored at once; past it the connection waits, and the
/// broker holds the rest (its in-flight window bounds what it sends anyway).
const IN_FLIGHT: usize = 512;

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub(crate) async fn run(triggers: Arc<Triggers>, url: String, subs: Vec<Subscription>) {
    let (host, port) = match sedge_core::trigger::mqtt_host_port(&url) {
        Ok(hp) => hp,
        Err(e) => {
            triggers.update(&url, |b| b.last_error = Some(e));
            return;
        }
    };
    let mut options = MqttOptions::new(triggers.config.client_id.clone(), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    // A lasting session: while the node is down the broker keeps its QoS 1
    // and 2 messages, and those it sent but never heard acknowledged it sends again.
    options.set_clean_session(false);
    options.set_manual_acks(true);
    options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    let (client, mut events) = AsyncClient::new(options, 1024);
    let subs = Arc::new(subs);
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut rng = fastrand::Rng::new();
    let mut failures = 0u32;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                tracing::info!("connected to the MQTT broker {url}");
                triggers.update(&url, |b| {
                    b.connected = true;
                    b.attempts = 0;
                    b.last_error = None;
                });
                for sub in subs.iter() {
                    if let Err(e) = client.subscribe(sub.filter.clone(), qos(sub.qos)).await {
                        tracing::warn!("subscribing to {:?} on {url}: {e}", sub.filter);
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(message))) => {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let (triggers, client, subs, url) = (triggers.clone(), client.clone(), subs.clone(), url.clone());
                tokio::spawn(async move {
                    take(&triggers, &client, &subs, &url, message).await;
                    drop(slot);
                });
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                let delay = Reconnect::BROKERS.delay(failures, &mut rng);
                if failures == 1 {
                    tracing::warn!("MQTT broker {url}: {e}; reconnecting");
                }
                triggers.update(&url, |b| {
                    if b.connected || failures == 1 {
                        b.disconnects += 1;
                    }
                    b.connected = false;
                    b.attempts = u64::from(failures);
                    b.last_error = Some(e.to_string());
                });
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Queues one message for every function whose filter it matches, then
/// acknowledges it. Not acknowledged when the node cannot store it: the
/// broker sends it again after the next connection.
async fn take(triggers: &Triggers, client: &AsyncClient, subs: &[Subscription], url: &str, message: Publish) {
    let matching: Vec<&Subscription> = subs.iter().filter(|s| rumqttc::matches(&message.topic, &s.filter)).collect();
    let qos_level = message.qos as u8;
    let headers = vec![
        ("x-mqtt-topic".to_owned(), message.topic.clone()),
        ("x-mqtt-qos".to_owned(), qos_level.to_string()),
        ("x-mqtt-retain".to_owned(), message.retain.to_string()),
        ("x-mqtt-message-id".to_owned(), message.pkid.to_string()),
        ("x-mqtt-dup".to_owned(), message.dup.to_string()),
    ];
    let calls: Vec<NewCall> = matching
        .iter()
        .map(|s| crate::event_call(&s.function, None, headers.clone(), message.payload.clone()))
        .collect();
    let mut wait = Duration::from_millis(100);
    let accepted = loop {
        if calls.is_empty() {
            break Vec::new();
        }
        match triggers.queue.submit(calls.clone()).await {
            Ok(results) => break results,
            Err(QueueError::Stopping) => return,
            Err(e) => {
                // The disk is full or busy: hold the message (unacknowledged)
                // and try again; the broker keeps it meanwhile.
                tracing::warn!("a message on {:?} from {url} is not stored yet: {e}", message.topic);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    };
    if let Err(e) = client.ack(&message).await {
        tracing::warn!("acknowledging a message on {:?} to {url}: {e}", message.topic);
    }
    triggers.update(url, |b| b.messages += 1);
    for sub in &matching {
        triggers.counted(&sub.function, "mqtt", &sub.filter);
    }
    for (sub, result) in matching.iter().zip(accepted) {
        let (Some(template), Ok(accepted)) = (&sub.reply, result) else { continue };
        let topic = sedge_core::trigger::expand_reply(template, &message.topic, &sub.function);
        reply(triggers, client, url, sub, &accepted.id, &topic).await;
    }
}

/// Publishes the call's answer once it has finished (done or given up).
/// rumqttc keeps it in its request queue while the broker is away and
/// sends it once connected again, so an answer outlives a broker's restart
/// (not the node's).
async fn reply(triggers: &Triggers, client: &AsyncClient, url: &str, sub: &Subscription, id: &str, topic: &str) {
    let Some(answer) = triggers.finished(id).await else { return };
    match client.publish(topic, qos(sub.qos), false, answer.body.to_vec()).await {
        Ok(()) => {
            triggers.update(url, |b| b.replies += 1);
            triggers.replied(&sub.function, "mqtt", &sub.filter);
        }
        Err(e) => tracing::warn!("publishing the answer of {id} to {topic:?}: {e}"),
    }
}
