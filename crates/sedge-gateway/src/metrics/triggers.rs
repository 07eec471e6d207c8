//! Triggers, read from their states at scrape time: whether each
//! function's broker connections are up, and the messages (or cron
//! firings) queued as calls since the node started.

use std::collections::BTreeMap;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec};
use sedge_triggers::TriggerState;

use super::{counters, gauges};

pub struct TriggerFigures {
    connected: IntGaugeVec,
    messages: IntCounterVec,
    reconnects: IntGaugeVec,
}

impl Default for TriggerFigures {
    fn default() -> Self {
        let labels = &["function", "kind"];
        Self {
            connected: gauges(
                "sedge_trigger_connected",
                "1 when every broker connection of the function's triggers of this kind is up (cron: always)",
                labels,
            ),
            messages: counters(
                "sedge_trigger_messages_total",
                "Messages (or cron firings) queued as calls since the node began",
                labels,
            ),
            reconnects: gauges(
                "sedge_trigger_connect_attempts",
                "Failed connection attempts to the trigger's broker since it was last connected",
                labels,
            ),
        }
    }
}

impl TriggerFigures {
    pub fn refresh(&self, states: &[TriggerState]) {
        // Several triggers of one kind on a function: up only if all are.
        let mut by_label: BTreeMap<(&str, &str), (bool, u64, u64)> = BTreeMap::new();
        for s in states {
            let entry = by_label.entry((s.function.as_str(), s.kind)).or_insert((true, 0, 0));
            entry.0 &= s.connected || s.kind == "cron";
            entry.1 += s.messages;
            entry.2 += s.attempts;
        }
        self.connected.reset();
        self.messages.reset();
        self.reconnects.reset();
        for ((function, kind), (up, messages, attempts)) in by_label {
            let labels = [function, kind];
            self.connected.with_label_values(&labels).set(i64::from(up));
            self.messages.with_label_values(&labels).inc_by(messages);
            self.reconnects.with_label_values(&labels).set(i64::try_from(attempts).unwrap_or(i64::MAX));
        }
    }

    pub fn collect(&self) -> Vec<MetricFamily> {
        [self.connected.collect(), self.messages.collect(), self.reconnects.collect()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(function: &str, kind: &'static str, connected: bool, messages: u64) -> TriggerState {
        TriggerState {
            function: function.into(),
            kind,
            pattern: "p".into(),
            broker: None,
            state: if connected { "connected" } else { "reconnecting" },
            connected,
            attempts: u64::from(!connected),
            last_error: None,
            messages,
            last_message: None,
            replies: 0,
        }
    }

    #[test]
    fn a_function_is_connected_only_if_all_its_triggers_of_a_kind_are() {
        let f = TriggerFigures::default();
        f.refresh(&[
            state("cam", "mqtt", true, 3),
            state("cam", "mqtt", false, 4),
            state("cam", "nats", true, 1),
            state("tick", "cron", false, 2),
        ]);
        let text = super::super::encode(&f.collect()).expect("encodes");
        assert!(text.contains("sedge_trigger_connected{function=\"cam\",kind=\"mqtt\"} 0"), "{text}");
        assert!(text.contains("sedge_trigger_connected{function=\"cam\",kind=\"nats\"} 1"), "{text}");
        assert!(text.contains("sedge_trigger_connected{function=\"tick\",kind=\"cron\"} 1"), "{text}");
        assert!(text.contains("sedge_trigger_messages_total{function=\"cam\",kind=\"mqtt\"} 7"), "{text}");
        assert!(text.contains("sedge_trigger_connect_attempts{function=\"cam\",kind=\"mqtt\"} 1"), "{text}");
        // A refresh replaces the figures: a removed function's series go.
        f.refresh(&[state("cam", "nats", true, 1)]);
        let text = super::super::encode(&f.collect()).expect("encodes");
        assert!(!text.contains("tick"), "{text}");
    }
}
