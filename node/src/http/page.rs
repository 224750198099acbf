//! `GET /`: the status page. Server-rendered HTML that refreshes itself; no scripts, no build
//! step, small enough for a Pi to render on every request.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;

use super::{ApiResult, AppState};

/// Seconds between the page's reloads.
const REFRESH_SECS: u32 = 5;

pub async fn page(State(st): State<Arc<AppState>>) -> ApiResult<Html<String>> {
    let ap = &st.apiary;
    let status = ap.status();
    let colony = ap.colony_status();
    let bees = ap.bee_status();
    let busy = bees
        .iter()
        .filter(|b| b.state == crate::bees::BeeState::Busy)
        .count();
    let swarm = ap.swarm_status().await?;
    let frames = ap.frame_list().await?;
    let ingest = st.ingest.as_ref().map(|i| i.status());
    let uptime = ap.started_at().elapsed().map(|d| d.as_secs()).unwrap_or(0);

    let mut h = String::with_capacity(4096);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Apiary · {name}</title><style>{STYLE}</style></head><body>\
         <h1>Apiary <small>{name}</small></h1>\
         <section class=\"cards\">\
         <div class=\"card\"><b>node</b><span id=\"node-id\">{id}</span><i>v{version} · up {up}</i></div>\
         <div class=\"card {band}\"><b>temperature</b><span id=\"temperature\">{temp:.2}</span><i id=\"band\">{band}</i></div>\
         <div class=\"card\"><b>bees</b><span id=\"bees\">{busy} / {nbees}</span><i>busy · {mem} MiB each</i></div>\
         <div class=\"card\"><b>meadow</b><span>{storage}</span><i>{uri}</i></div>\
         </section>",
        name = esc(&status.name),
        id = esc(&status.node_id),
        version = status.version,
        up = human_secs(uptime),
        band = colony.regulation.as_str(),
        temp = colony.temperature,
        nbees = bees.len(),
        mem = status.memory_per_bee_mb,
        storage = status.storage,
        uri = esc(&status.storage_uri),
    );

    h.push_str("<h2>Ingest</h2>");
    match &ingest {
        Some(i) => {
            let _ = write!(
                h,
                "<table id=\"ingest\"><tr><th>broker</th><th>messages/s</th><th>received</th>\
                 <th>committed rows</th><th>rejected</th><th>write-ahead log</th></tr>\
                 <tr><td>{}</td><td id=\"rate\">{:.1}</td><td id=\"received\">{}</td>\
                 <td id=\"committed\">{}</td><td>{}</td><td>{}</td></tr></table>",
                esc(&i.broker),
                i.messages_per_sec,
                i.received,
                i.committed_rows,
                i.rejected,
                i.wal_records
            );
        }
        None => h.push_str("<p class=\"quiet\">not ingesting</p>"),
    }

    let _ = write!(
        h,
        "<h2>Swarm</h2><table id=\"swarm\"><tr><th>node</th><th>name</th><th>state</th>\
         <th>idle bees</th><th>temperature</th></tr>"
    );
    for n in &swarm.nodes {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{:.2}</td></tr>",
            esc(&n.node_id),
            esc(&n.name),
            n.state,
            n.idle_bees,
            n.bees,
            n.colony_temperature
        );
    }
    h.push_str("</table>");

    let _ = write!(
        h,
        "<h2>Frames</h2><table id=\"frames\"><tr><th>frame</th><th class=\"n\">rows</th>\
         <th class=\"n\">cells</th><th class=\"n\">size</th><th class=\"n\">version</th></tr>"
    );
    if frames.is_empty() {
        h.push_str("<tr><td colspan=\"5\" class=\"quiet\">no frames yet</td></tr>");
    }
    for f in &frames {
        let name = format!("{}.{}.{}", f.hive, f.box_name, f.frame);
        let _ = write!(
            h,
            "<tr><td>{name}</td><td class=\"n\" data-frame=\"{name}\">{rows}</td>\
             <td class=\"n\">{cells}</td><td class=\"n\">{size}</td><td class=\"n\">{v}</td></tr>",
            name = esc(&name),
            rows = f.rows,
            cells = f.cells,
            size = human_bytes(f.bytes),
            v = f.version,
        );
    }
    let _ = write!(
        h,
        "</table><footer>refreshes every {REFRESH_SECS} s · <a href=\"/metrics\">metrics</a>\
         </footer></body></html>"
    );
    Ok(Html(h))
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fffdf6}\
h1{color:#8a5a00}h1 small{color:#666;font-weight:normal}\
.cards{display:flex;flex-wrap:wrap;gap:1em}\
.card{border:1px solid #e5d7a8;border-radius:8px;padding:.8em 1.2em;min-width:11em;background:#fff8dc}\
.card b{display:block;color:#8a5a00;font-size:.8em;text-transform:uppercase}\
.card span{display:block;font-size:1.6em}.card i{color:#666;font-size:.85em}\
.card.warm{background:#ffe7b0}.card.hot{background:#ffc48a}.card.critical{background:#ff9d8a}\
.card.cold{background:#e3f0ff}\
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.3em .8em;border-bottom:1px solid #eee;text-align:left}\
.n{text-align:right}.quiet{color:#888}footer{margin-top:2em;color:#888;font-size:.85em}";

/// Text made safe inside HTML elements and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_sizes() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_secs(3700), "1h 1m");
    }
}
