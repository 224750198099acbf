//! Time travel: `h.b.f VERSION AS OF n` and `frame_at('h.b.f', n)`, found in a statement's
//! tokens and turned into the `frame_at` table function with a completed frame name.

use datafusion::sql::sqlparser::tokenizer::{Token, Word};

use super::catalog::{FRAME_AT, TableKey};
use super::statement;
use crate::error::{Error, Result};
use crate::names::FrameRef;

/// `h.b.f VERSION AS OF n` becomes `frame_at('h.b.f', n)`, and names inside `frame_at`
/// are completed with the current hive and box. Returns the versions to bind.
pub(super) fn rewrite_time_travel(
    sql: &str,
    resolve: impl Fn(&[String]) -> Result<FrameRef>,
) -> Result<(String, Vec<TableKey>)> {
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("version") && !lower.contains(FRAME_AT) {
        return Ok((sql.to_string(), Vec::new()));
    }
    let toks = statement::tokenize(sql)?;
    let sig: Vec<usize> = (0..toks.len())
        .filter(|&i| !matches!(toks[i], Token::Whitespace(_)))
        .collect();
    let word = |i: usize, kw: &str| matches!(&toks[i], Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(kw));
    let ident = |t: &Token| match t {
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        Token::Word(w) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    };
    let number = |t: &Token| match t {
        Token::Number(n, _) => n.parse::<i64>().ok(),
        _ => None,
    };
    let mut out: Vec<String> = toks.iter().map(|t| t.to_string()).collect();
    let mut versions = Vec::new();
    let mut k = 0;
    while k < sig.len() {
        // name VERSION AS OF n
        if k + 3 < sig.len()
            && word(sig[k], "VERSION")
            && word(sig[k + 1], "AS")
            && word(sig[k + 2], "OF")
        {
            let version = number(&toks[sig[k + 3]])
                .ok_or_else(|| Error::invalid("VERSION AS OF takes a whole number"))?;
            // Walk back over `part(.part)*` before VERSION.
            let mut first = k;
            let mut parts = Vec::new();
            loop {
                if first == 0 {
                    break;
                }
                let Some(p) = ident(&toks[sig[first - 1]]) else {
                    break;
                };
                parts.insert(0, p);
                first -= 1;
                if first > 0 && toks[sig[first - 1]] == Token::Period {
                    first -= 1;
                } else {
                    break;
                }
            }
            if parts.is_empty() {
                return Err(Error::invalid("VERSION AS OF must follow a frame name"));
            }
            let frame = resolve(&parts)?;
            for slot in &mut out[sig[first]..=sig[k + 3]] {
                slot.clear();
            }
            out[sig[first]] = format!("{FRAME_AT}('{frame}', {version})");
            versions.push(frame.at(Some(version)));
            k += 4;
            continue;
        }
        // frame_at('name', n)
        if k + 5 < sig.len()
            && word(sig[k], FRAME_AT)
            && toks[sig[k + 1]] == Token::LParen
            && toks[sig[k + 3]] == Token::Comma
            && toks[sig[k + 5]] == Token::RParen
            && let Token::SingleQuotedString(name) = &toks[sig[k + 2]]
            && let Some(version) = number(&toks[sig[k + 4]])
        {
            let parts: Vec<String> = name.split('.').map(str::to_string).collect();
            let frame = resolve(&parts)?;
            out[sig[k + 2]] = format!("'{frame}'");
            versions.push(frame.at(Some(version)));
            k += 6;
            continue;
        }
        k += 1;
    }
    Ok((out.concat(), versions))
}
