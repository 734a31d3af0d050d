//! What of a request may go into a log line.

use std::borrow::Cow;

/// Runs this long of key-like characters are hidden.
const HIDE_FROM: usize = 16;

/// `path` for an audit line, with every run of 16 or more characters that
/// could spell a key in any of its encodings (base64url, standard base64,
/// hex, percent-encoding) replaced by `<redacted>`.
///
/// A refused client may have put its key anywhere, the path included; the
/// log must not keep it. Ordinary MCP paths (`/mcp`, `/sse`,
/// `/messages/message`) have no such runs and pass unchanged.
///
/// ```
/// use thv_server::redact::loggable_path;
///
/// assert_eq!(loggable_path("/mcp"), "/mcp");
/// assert_eq!(loggable_path("/mcp/abcdefghijklmnopqrstuvwxyz"), "/mcp/<redacted>");
/// ```
pub fn loggable_path(path: &str) -> Cow<'_, str> {
    let keyish =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/' | '=' | '%');
    let hidden = |run: &str| {
        run.len() >= HIDE_FROM && run.chars().filter(|c| *c != '/').count() >= HIDE_FROM
    };

    // Cheap path: nothing long enough to hide.
    let mut out = String::new();
    let mut run_start = None;
    let mut changed = false;
    for (i, c) in path
        .char_indices()
        .chain(std::iter::once((path.len(), ' ')))
    {
        let in_run = i < path.len() && keyish(c) && c != '/';
        match (in_run, run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(start)) => {
                let run = &path[start..i];
                if hidden(run) {
                    out.push_str("<redacted>");
                    changed = true;
                } else {
                    out.push_str(run);
                }
                run_start = None;
                if i < path.len() {
                    out.push(c);
                }
            }
            (false, None) if i < path.len() => out.push(c),
            _ => {}
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_every_encoding_of_a_key() {
        let key = thv_actors::SharedKey::generate();
        for form in thv_actors::testing::encodings(&key) {
            for path in [
                format!("/mcp/{form}"),
                format!("/mcp;X-ToolHive-Auth={form}"),
                format!("/{form}/x"),
            ] {
                let shown = loggable_path(&path);
                assert!(
                    !thv_actors::testing::leaks(&shown, &key),
                    "{path} -> {shown}"
                );
            }
        }
    }

    #[test]
    fn leaves_ordinary_paths_alone() {
        for path in ["/mcp", "/sse", "/messages/message", "/health", "/a/b/c", ""] {
            assert!(matches!(loggable_path(path), Cow::Borrowed(_)), "{path}");
        }
    }
}
