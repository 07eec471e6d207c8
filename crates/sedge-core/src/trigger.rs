//! A function's `[[triggers]]`: the events that call it without an HTTP
//! caller — messages on an MQTT topic filter or a NATS subject, and cron
//! schedules. Each event becomes a queued (asynchronous) call.

use std::str::FromStr;

use croner::parser::{CronParser, Seconds, Year};
use serde::Deserialize;

/// Longest topic or subject taken: MQTT's own limit is 65,535 bytes, far
/// more than any device sends, and a reply topic is built from it.
const MAX_TOPIC: usize = 1024;

/// Where a trigger's events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerSource {
    /// Messages on an MQTT topic filter (`+` and `#` wildcards).
    Mqtt {
        filter: String,
        qos: u8,
        /// `mqtt://host:port`; `None` takes the node's `serve --mqtt`.
        broker: Option<String>,
    },
    /// Messages on a NATS subject (`*` and `>` wildcards).
    Nats {
        subject: String,
        /// `nats://host:port`; `None` takes the node's `serve --nats`.
        server: Option<String>,
    },
    /// A schedule: five fields, or six with seconds first, in UTC.
    Cron { schedule: String },
}

/// The locked form of one `[[triggers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSpec {
    pub source: TriggerSource,
    /// Where the answer is published (MQTT topic or NATS subject), with
    /// `{topic}` standing for the message's topic and `{function}` for the
    /// function's name.
    pub reply: Option<String>,
    /// The Content-Type the call's body is given (`image/png` for a
    /// camera's frames); `application/octet-stream` when unset. A NATS
    /// message's own Content-Type header wins.
    pub content_type: Option<String>,
}

impl TriggerSpec {
    /// The kind as a manifest and `describe` name it.
    pub fn kind(&self) -> &'static str {
        match self.source {
            TriggerSource::Mqtt { .. } => "mqtt",
            TriggerSource::Nats { .. } => "nats",
            TriggerSource::Cron { .. } => "cron",
        }
    }

    /// The topic filter, subject or schedule.
    pub fn pattern(&self) -> &str {
        match &self.source {
            TriggerSource::Mqtt { filter, .. } => filter,
            TriggerSource::Nats { subject, .. } => subject,
            TriggerSource::Cron { schedule } => schedule,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrigger {
    mqtt: Option<String>,
    nats: Option<String>,
    cron: Option<String>,
    qos: Option<i64>,
    reply: Option<String>,
    broker: Option<String>,
    server: Option<String>,
    content_type: Option<String>,
}

/// Parses a schedule as triggers take it: five fields (minute first) or
/// six (seconds first), no year.
pub fn parse_cron(schedule: &str) -> Result<croner::Cron, String> {
    let fields = schedule.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!(
            "expected five fields (minute hour day month weekday) or six with seconds first, found {fields} in {schedule:?}"
        ));
    }
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    parser.parse(schedule).map_err(|e| format!("{schedule:?} is not a cron schedule: {e}"))
}

/// Checks an MQTT topic filter: `+` a whole level, `#` only the whole last level.
pub fn check_mqtt_filter(filter: &str) -> Result<(), String> {
    check_text(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("{filter:?}: '#' must be the whole last level, as in \"sensors/#\""));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level, as in \"sensors/+/temperature\""));
        }
    }
    Ok(())
}

/// Checks an MQTT topic a message is published to: no wildcards.
pub fn check_mqtt_topic(topic: &str) -> Result<(), String> {
    check_text(topic)?;
    if topic.contains(['+', '#']) {
        return Err(format!("{topic:?}: a topic to publish to may not hold '+' or '#'"));
    }
    Ok(())
}

/// Checks a NATS subject: dot-separated tokens, `*` a whole token, `>` the whole last one.
pub fn check_nats_subject(subject: &str, wildcards: bool) -> Result<(), String> {
    check_text(subject)?;
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!("{subject:?}: a subject's tokens, between dots, may not be empty"));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(format!("{subject:?}: a subject may not hold spaces"));
        }
        let wild = token.contains(['*', '>']);
        if wild && !wildcards {
            return Err(format!("{subject:?}: a subject to publish to may not hold '*' or '>'"));
        }
        if token.contains('>') && (*token != ">" || i + 1 != tokens.len()) {
            return Err(format!("{subject:?}: '>' must be the whole last token, as in \"cam.>\""));
        }
        if token.contains('*') && *token != "*" {
            return Err(format!("{subject:?}: '*' must be a whole token, as in \"cam.*.frames\""));
        }
    }
    Ok(())
}

fn check_text(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("may not be empty".into());
    }
    if text.len() > MAX_TOPIC {
        return Err(format!("may be at most {MAX_TOPIC} bytes, found {}", text.len()));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{text:?} holds a control character"));
    }
    Ok(())
}

/// Fills a reply template: `{topic}` is the message's topic (or subject),
/// `{function}` the function's name. Other braces are kept as written.
pub fn expand_reply(template: &str, topic: &str, function: &str) -> String {
    template.replace("{topic}", topic).replace("{function}", function)
}

fn check_reply(template: &str, nats: bool) -> Result<(), String> {
    // Checked as filled with a plain topic, so the template's own text is what is judged.
    let sample = expand_reply(template, "t", "f");
    if nats {
        check_nats_subject(&sample, false)
    } else {
        check_mqtt_topic(&sample)
    }
}

/// A media type as `type/subtype`, e.g. `image/png`, parameters allowed.
fn check_media_type(media: &str) -> Result<(), String> {
    let essence = media.split(';').next().unwrap_or_default().trim();
    let token = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c));
    match essence.split_once('/') {
        Some((kind, sub)) if token(kind) && token(sub) && !media.chars().any(char::is_control) => Ok(()),
        _ => Err(format!("expected a media type like \"image/png\", found {media:?}")),
    }
}

fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("expected a URL like {}://host:port, found {url:?}", schemes[0]));
    };
    if !schemes.contains(&scheme) {
        return Err(format!("expected a URL like {}://host:port, found {url:?}", schemes[0]));
    }
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!("expected a URL like {}://host:port, found {url:?}", schemes[0]));
    }
    Ok(())
}

/// Parses a broker URL (`mqtt://host[:port]`, `tcp://` too) into host and port.
pub fn mqtt_host_port(url: &str) -> Result<(String, u16), String> {
    check_url(url, &["mqtt", "tcp"])?;
    let rest = url.split_once("://").map_or(url, |(_, r)| r).trim_end_matches('/');
    host_port(rest, 1883).ok_or_else(|| format!("{url:?}: the port must be a number from 1 to 65535"))
}

/// Checks a NATS server URL (`nats://host[:port]`).
pub fn check_nats_url(url: &str) -> Result<(), String> {
    check_url(url, &["nats", "tcp"])?;
    let rest = url.split_once("://").map_or(url, |(_, r)| r).trim_end_matches('/');
    host_port(rest, 4222).map(|_| ()).ok_or_else(|| format!("{url:?}: the port must be a number from 1 to 65535"))
}

fn host_port(rest: &str, default: u16) -> Option<(String, u16)> {
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            let port = u16::from_str(port).ok().filter(|p| *p > 0)?;
            Some((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
        }
        Some(_) => None,
        None => Some((rest.to_owned(), default)),
    }
}

impl RawTrigger {
    /// The checked entry, or the field at fault (`triggers[i].…`) and the problem.
    pub(crate) fn check(self, i: usize) -> Result<TriggerSpec, (String, String)> {
        let field = |name: &str| format!("triggers[{i}].{name}");
        let fail = |name: &str, problem: String| Err((field(name), problem));
        let given = [self.mqtt.is_some(), self.nats.is_some(), self.cron.is_some()].iter().filter(|g| **g).count();
        if given != 1 {
            return Err((
                format!("triggers[{i}]"),
                "each trigger names exactly one of mqtt (a topic filter), nats (a subject) or cron (a schedule)".into(),
            ));
        }
        if self.qos.is_some() && self.mqtt.is_none() {
            return fail("qos", "is for mqtt triggers".into());
        }
        if self.broker.is_some() && self.mqtt.is_none() {
            return fail("broker", "is for mqtt triggers (a nats trigger names its `server`)".into());
        }
        if self.server.is_some() && self.nats.is_none() {
            return fail("server", "is for nats triggers (an mqtt trigger names its `broker`)".into());
        }
        let source = if let Some(filter) = self.mqtt {
            if let Err(e) = check_mqtt_filter(&filter) {
                return fail("mqtt", e);
            }
            let qos = match self.qos {
                None => 1,
                Some(q @ 0..=2) => q as u8,
                Some(q) => return fail("qos", format!("expected 0, 1 or 2, found {q}")),
            };
            if let Some(url) = &self.broker {
                if let Err(e) = mqtt_host_port(url) {
                    return fail("broker", e);
                }
            }
            TriggerSource::Mqtt { filter, qos, broker: self.broker }
        } else if let Some(subject) = self.nats {
            if let Err(e) = check_nats_subject(&subject, true) {
                return fail("nats", e);
            }
            if let Some(url) = &self.server {
                if let Err(e) = check_nats_url(url) {
                    return fail("server", e);
                }
            }
            TriggerSource::Nats { subject, server: self.server }
        } else {
            let schedule = self.cron.unwrap_or_default();
            if let Err(e) = parse_cron(&schedule) {
                return fail("cron", e);
            }
            TriggerSource::Cron { schedule }
        };
        if let Some(reply) = &self.reply {
            if matches!(source, TriggerSource::Cron { .. }) {
                return fail(
                    "reply",
                    "is for mqtt and nats triggers; a cron trigger's answers are kept as its calls' results".into(),
                );
            }
            if let Err(e) = check_reply(reply, matches!(source, TriggerSource::Nats { .. })) {
                return fail("reply", e);
            }
        }
        if let Some(media) = &self.content_type {
            if matches!(source, TriggerSource::Cron { .. }) {
                return fail("content_type", "is for mqtt and nats triggers; a cron call has no body".into());
            }
            if let Err(e) = check_media_type(media) {
                return fail("content_type", e);
            }
        }
        Ok(TriggerSpec { source, reply: self.reply, content_type: self.content_type })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> Result<TriggerSpec, (String, String)> {
        let raw: RawTrigger = toml::from_str(toml_text).map_err(|e| (String::new(), e.to_string()))?;
        raw.check(0)
    }

    #[test]
    fn an_mqtt_trigger_defaults_to_qos_1_and_the_nodes_broker() {
        let t = check("mqtt = \"sensors/+/temperature\"\nreply = \"results/{topic}\"").expect("valid");
        assert_eq!(t.source, TriggerSource::Mqtt { filter: "sensors/+/temperature".into(), qos: 1, broker: None });
        assert_eq!(t.reply.as_deref(), Some("results/{topic}"));
        assert_eq!(t.kind(), "mqtt");
    }

    #[test]
    fn bad_filters_name_the_wildcard_at_fault() {
        for (filter, word) in [("a/b#", "'#'"), ("a/#/b", "'#'"), ("a/x+/b", "'+'"), ("", "empty")] {
            let (field, problem) = check(&format!("mqtt = {filter:?}")).expect_err("refused");
            assert_eq!(field, "triggers[0].mqtt");
            assert!(problem.contains(word), "{filter}: {problem}");
        }
        assert!(check_mqtt_filter("#").is_ok());
        assert!(check_mqtt_filter("a/+/#").is_ok());
    }

    #[test]
    fn qos_and_reply_are_checked() {
        let (field, problem) = check("mqtt = \"a\"\nqos = 3").expect_err("refused");
        assert_eq!((field.as_str(), problem.as_str()), ("triggers[0].qos", "expected 0, 1 or 2, found 3"));
        let (field, problem) = check("mqtt = \"a\"\nreply = \"out/#\"").expect_err("refused");
        assert_eq!(field, "triggers[0].reply");
        assert!(problem.contains("'+' or '#'"), "{problem}");
        let (field, _) = check("cron = \"* * * * *\"\nreply = \"x\"").expect_err("refused");
        assert_eq!(field, "triggers[0].reply");
        let (field, _) = check("nats = \"a\"\nqos = 1").expect_err("refused");
        assert_eq!(field, "triggers[0].qos");
    }

    #[test]
    fn a_content_type_is_a_media_type_for_message_triggers() {
        let t = check("mqtt = \"cam/+\"\ncontent_type = \"image/png\"").expect("valid");
        assert_eq!(t.content_type.as_deref(), Some("image/png"));
        let (field, problem) = check("mqtt = \"a\"\ncontent_type = \"png\"").expect_err("refused");
        assert_eq!(field, "triggers[0].content_type");
        assert!(problem.contains("image/png"), "{problem}");
        let (field, _) = check("cron = \"* * * * *\"\ncontent_type = \"image/png\"").expect_err("refused");
        assert_eq!(field, "triggers[0].content_type");
    }

    #[test]
    fn exactly_one_source() {
        let (field, problem) = check("mqtt = \"a\"\ncron = \"* * * * *\"").expect_err("refused");
        assert_eq!(field, "triggers[0]");
        assert!(problem.contains("exactly one"));
        assert_eq!(check("reply = \"x\"").expect_err("refused").0, "triggers[0]");
    }

    #[test]
    fn cron_takes_five_fields_or_six_with_seconds() {
        assert!(check("cron = \"*/5 * * * *\"").is_ok());
        assert!(check("cron = \"*/10 * * * * *\"").is_ok());
        let (field, problem) = check("cron = \"* * *\"").expect_err("refused");
        assert_eq!(field, "triggers[0].cron");
        assert!(problem.contains("found 3"), "{problem}");
        let (_, problem) = check("cron = \"61 * * * *\"").expect_err("refused");
        assert!(problem.contains("not a cron schedule"), "{problem}");
        assert!(check("cron = \"0 0 0 1 1 * 2030\"").is_err());
    }

    #[test]
    fn nats_subjects_and_servers() {
        assert!(check("nats = \"cam.frames\"").is_ok());
        assert!(check("nats = \"cam.*.frames\"\nserver = \"nats://10.0.0.2:4222\"").is_ok());
        assert!(check("nats = \"cam.>\"").is_ok());
        for bad in ["cam..frames", "cam.>.x", "cam.f*", "a b"] {
            assert_eq!(check(&format!("nats = {bad:?}")).expect_err("refused").0, "triggers[0].nats", "{bad}");
        }
        assert_eq!(check("nats = \"a\"\nserver = \"http://x\"").expect_err("refused").0, "triggers[0].server");
        assert_eq!(check("nats = \"a\"\nreply = \"out.*\"").expect_err("refused").0, "triggers[0].reply");
    }

    #[test]
    fn broker_urls() {
        assert_eq!(mqtt_host_port("mqtt://127.0.0.1:1884").expect("valid"), ("127.0.0.1".into(), 1884));
        assert_eq!(mqtt_host_port("tcp://broker").expect("valid"), ("broker".into(), 1883));
        assert!(mqtt_host_port("mqtt://h:0").is_err());
        assert!(mqtt_host_port("http://h").is_err());
        assert!(mqtt_host_port("h:1883").is_err());
        assert_eq!(check("mqtt = \"a\"\nbroker = \"ws://x\"").expect_err("refused").0, "triggers[0].broker");
    }

    #[test]
    fn reply_templates_expand_topic_and_function() {
        assert_eq!(expand_reply("results/{topic}", "sensors/1/t", "f"), "results/sensors/1/t");
        assert_eq!(expand_reply("{function}/out", "x", "classify"), "classify/out");
        assert_eq!(expand_reply("plain", "x", "f"), "plain");
    }
}

#[cfg(test)]
mod manifest_tests {
    use crate::FunctionSpec;

    #[test]
    fn a_manifest_names_the_trigger_at_fault() {
        let base = "name = \"f\"\nruntime = \"python\"\nhandler = \"h.py\"\n";
        let ok = format!("{base}[[triggers]]\nmqtt = \"a/+\"\n[[triggers]]\ncron = \"*/5 * * * *\"\n");
        let spec = FunctionSpec::parse("sedge.toml", &ok).expect("valid");
        assert_eq!(spec.triggers.len(), 2);
        let bad = format!("{base}[[triggers]]\nmqtt = \"a\"\n[[triggers]]\ncron = \"nope\"\n");
        let e = FunctionSpec::parse("sedge.toml", &bad).expect_err("refused").to_string();
        assert!(e.starts_with("sedge.toml: field `triggers[1].cron`: "), "{e}");
    }
}
