//! Human-readable output of the operator commands: aligned tables without borders (easy to
//! read and to `grep`/`awk`), and `key  value` blocks for single items.

use comfy_table::{ContentArrangement, Table};

use super::model::{
    format_time, ClusterStatus, GroupView, InboxView, QueuePeek, QueuedState, RetainedStats,
    RetainedView, SessionView, UserView,
};

/// A borderless table: header in capitals, two spaces between columns, no trailing blanks.
pub fn table<R: IntoIterator<Item = String>>(
    header: &[&str],
    rows: impl IntoIterator<Item = R>,
) -> String {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row.into_iter().collect::<Vec<String>>());
    }
    let last = header.len().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key  value` lines, values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        out.push_str(format!("{key:<width$}  {value}").trim_end());
        out.push('\n');
    }
    out
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn protocol(level: u8) -> String {
    match level {
        3 => "3.1".to_string(),
        4 => "3.1.1".to_string(),
        5 => "5.0".to_string(),
        other => format!("level {other}"),
    }
}

fn expiry(secs: u32) -> String {
    if secs == u32::MAX {
        "never".to_string()
    } else {
        format!("{secs} s")
    }
}

fn expires_at(at: Option<u64>) -> String {
    at.map_or_else(|| "never".to_string(), format_time)
}

pub fn retained_list(list: &[RetainedView], filter: &str) -> String {
    if list.is_empty() {
        return format!("no retained messages match {filter}\n");
    }
    table(
        &["TOPIC", "QOS", "BYTES", "EXPIRES (UTC)", "PAYLOAD"],
        list.iter().map(|r| {
            [
                r.topic.clone(),
                r.qos.to_string(),
                r.bytes.to_string(),
                expires_at(r.expires_at_ms),
                r.payload.display(),
            ]
        }),
    )
}

pub fn retained(r: &RetainedView) -> String {
    fields(&[
        ("topic", r.topic.clone()),
        ("qos", r.qos.to_string()),
        ("bytes", r.bytes.to_string()),
        ("expires", expires_at(r.expires_at_ms)),
        ("payload", r.payload.display()),
    ])
}

pub fn retained_stats(s: &RetainedStats) -> String {
    let mut out = fields(&[
        ("retained messages", s.count.to_string()),
        ("payload bytes", s.bytes.to_string()),
    ]);
    if !s.largest.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["LARGEST TOPICS", "BYTES"],
            s.largest
                .iter()
                .map(|t| [t.topic.clone(), t.bytes.to_string()]),
        ));
    }
    out
}

pub fn sessions(list: &[SessionView]) -> String {
    if list.is_empty() {
        return "no sessions\n".to_string();
    }
    table(
        &[
            "CLIENT ID",
            "USER",
            "CONNECTED",
            "PERSISTENT",
            "PROTOCOL",
            "SUBSCRIPTIONS",
            "QUEUED",
            "QUEUED BYTES",
            "IN FLIGHT",
        ],
        list.iter().map(|s| {
            [
                s.client_id.clone(),
                s.user.clone(),
                yes_no(s.connected),
                yes_no(s.persistent),
                protocol(s.protocol_level),
                s.subscriptions.len().to_string(),
                s.queued.to_string(),
                s.queued_bytes.to_string(),
                s.in_flight.to_string(),
            ]
        }),
    )
}

pub fn session(s: &SessionView) -> String {
    let node = s.node.iter().map(|node| ("node", node.clone()));
    let mut out = fields(
        &[
            ("client id", s.client_id.clone()),
            ("user", s.user.clone()),
            ("connected", yes_no(s.connected)),
            ("persistent", yes_no(s.persistent)),
            ("protocol", format!("MQTT {}", protocol(s.protocol_level))),
            ("session expiry", expiry(s.expiry_secs)),
            (
                "queued",
                format!("{} messages, {} bytes", s.queued, s.queued_bytes),
            ),
            ("in flight", s.in_flight.to_string()),
        ]
        .into_iter()
        .chain(node)
        .collect::<Vec<_>>(),
    );
    out.push('\n');
    if s.subscriptions.is_empty() {
        out.push_str("no subscriptions\n");
    } else {
        out.push_str(&table(
            &["SUBSCRIPTION", "QOS"],
            s.subscriptions
                .iter()
                .map(|sub| [sub.filter.clone(), sub.qos.to_string()]),
        ));
    }
    out
}

pub fn queue(q: &QueuePeek) -> String {
    let mut out = format!(
        "{}: {} queued, {} bytes\n",
        q.client_id, q.queued, q.queued_bytes
    );
    if !q.entries.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["SEQ", "TOPIC", "QOS", "STATE", "BYTES", "PAYLOAD"],
            q.entries.iter().map(|e| {
                let state = match (e.message_deleted, e.state) {
                    (true, _) => "deleted",
                    (false, QueuedState::Pending) => "pending",
                    (false, QueuedState::Released) => "released",
                };
                [
                    e.seq.to_string(),
                    e.topic.clone(),
                    e.qos.to_string(),
                    state.to_string(),
                    e.bytes.to_string(),
                    e.payload.display(),
                ]
            }),
        ));
    }
    out
}

pub fn users(list: &[UserView]) -> String {
    if list.is_empty() {
        return "no users\n".to_string();
    }
    table(
        &["USER", "OPERATOR", "CREATED (UTC)"],
        list.iter().map(|u| {
            [
                u.user.clone(),
                yes_no(u.operator),
                format_time(u.created_at_ms),
            ]
        }),
    )
}

pub fn groups(list: &[GroupView]) -> String {
    if list.is_empty() {
        return "no groups\n".to_string();
    }
    table(
        &["GROUP", "MEMBERS", "CREATED (UTC)"],
        list.iter().map(|g| {
            [
                g.gid.clone(),
                g.members.len().to_string(),
                format_time(g.created_at_ms),
            ]
        }),
    )
}

pub fn group(g: &GroupView) -> String {
    let mut out = fields(&[
        ("group", g.gid.clone()),
        ("created", format!("{} UTC", format_time(g.created_at_ms))),
        ("members", g.members.len().to_string()),
    ]);
    for member in &g.members {
        out.push_str(&format!("  {member}\n"));
    }
    out
}

pub fn inbox(user: &str, list: &[InboxView]) -> String {
    if list.is_empty() {
        return format!("the inbox of {user} is empty\n");
    }
    table(
        &[
            "SEQ",
            "SENT (UTC)",
            "ROLE",
            "FROM",
            "TOPIC",
            "BYTES",
            "PAYLOAD",
        ],
        list.iter().map(|e| {
            [
                e.seq.to_string(),
                format_time(e.sent_at_ms),
                e.role.clone(),
                e.from.clone().unwrap_or_else(|| "-".to_string()),
                e.topic
                    .clone()
                    .unwrap_or_else(|| "(deleted by retention)".to_string()),
                e.bytes.to_string(),
                e.payload
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |p| p.display()),
            ]
        }),
    )
}

/// `tern cluster status`: this node, the NATS server, the nodes, the streams.
pub fn cluster(s: &ClusterStatus) -> String {
    let mut out = String::new();
    let mut pairs = Vec::new();
    match &s.this_node {
        Some(node) => {
            pairs.push(("node", node.node.clone()));
            pairs.push(("epoch", node.epoch.clone()));
            pairs.push(("lease holds", yes_no(node.lease_holds)));
        }
        None => pairs.push(("node", "(not running; read from NATS)".to_string())),
    }
    pairs.push(("nats server", s.nats_server.clone()));
    pairs.push((
        "nats cluster",
        s.nats_cluster
            .clone()
            .unwrap_or_else(|| "(none)".to_string()),
    ));
    out.push_str(&fields(&pairs));
    out.push('\n');
    out.push_str(&table(
        &["NODE", "EPOCH"],
        s.nodes.iter().map(|n| [n.node.clone(), n.epoch.clone()]),
    ));
    out.push('\n');
    out.push_str(&table(
        &["STREAM", "MESSAGES", "BYTES", "LEADER", "REPLICAS"],
        s.streams.iter().map(|stream| {
            let replicas = stream
                .replicas
                .iter()
                .map(|r| {
                    let state = if r.offline {
                        "offline".to_string()
                    } else if r.current {
                        "current".to_string()
                    } else {
                        format!("lag {}", r.lag)
                    };
                    format!("{} ({state}, seen {} ms ago)", r.server, r.seen_ms_ago)
                })
                .collect::<Vec<_>>()
                .join(", ");
            [
                stream.name.clone(),
                stream.messages.to_string(),
                stream.bytes.to_string(),
                stream.leader.clone().unwrap_or_else(|| "-".to_string()),
                if replicas.is_empty() {
                    "-".to_string()
                } else {
                    replicas
                },
            ]
        }),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned_without_borders() {
        let out = table(
            &["A", "LONGER"],
            [
                ["x".to_string(), "1".to_string()],
                ["yyyy".to_string(), "22".to_string()],
            ],
        );
        assert_eq!(out, "A     LONGER\nx     1\nyyyy  22\n");
        assert_eq!(
            fields(&[("a", "1".into()), ("bbb", "2".into())]),
            "a    1\nbbb  2\n"
        );
    }
}
