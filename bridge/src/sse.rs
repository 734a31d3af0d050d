//! An incremental parser for `text/event-stream` bodies.
//!
//! Bytes go in as they arrive from the socket, in chunks of any size; whole
//! events come out. It follows the event-stream rules a browser applies:
//! lines end in LF, CRLF or a lone CR; a line starting with `:` is a comment;
//! `data:` lines accumulate, joined by LF; a blank line dispatches; `id:`
//! sets the last event id (and persists across events); one leading space
//! after the colon is dropped; a UTF-8 BOM at the very start is ignored.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// The `event:` field, `message` when the server sent none.
    pub(crate) event: String,
    /// The `data:` lines joined by `\n`.
    pub(crate) data: String,
    /// The last event id in force when this event was dispatched, if any.
    pub(crate) id: Option<String>,
    /// A `retry:` the server asked for, in milliseconds.
    pub(crate) retry: Option<u64>,
}

/// Turns a byte stream into [`Event`]s.
///
/// # Limitations
///
/// A single line longer than `max_line` bytes ends the stream with an error
/// instead of growing the buffer without bound.
#[derive(Debug)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    /// The previous chunk ended in CR, so a LF starting the next is its pair.
    after_cr: bool,
    started: bool,
    event: Option<String>,
    data: Option<String>,
    last_id: Option<String>,
    retry: Option<u64>,
    max_line: usize,
}

/// The stream held a line too long to buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineTooLong;

impl SseParser {
    pub(crate) fn new(max_line: usize) -> Self {
        SseParser {
            buffer: Vec::new(),
            after_cr: false,
            started: false,
            event: None,
            data: None,
            last_id: None,
            retry: None,
            max_line,
        }
    }

    /// The id of the last event seen, for `Last-Event-ID` on a reconnect.
    pub(crate) fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Feeds one chunk and returns the events it completed.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, LineTooLong> {
        let mut events = Vec::new();

        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }

            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.buffer);
                    if let Some(event) = self.line(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    if self.buffer.len() >= self.max_line {
                        return Err(LineTooLong);
                    }
                    self.buffer.push(byte);
                }
            }
        }

        Ok(events)
    }

    fn line(&mut self, raw: &[u8]) -> Option<Event> {
        let mut raw = raw;
        if !self.started {
            self.started = true;
            raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        }
        let line = String::from_utf8_lossy(raw);

        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }

        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            // An id with a NUL is ignored, as browsers do.
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Event> {
        let event = self.event.take();
        let retry = self.retry.take();

        // An event with no data line is not dispatched (it may still have set
        // the id, which is kept).
        let data = self.data.take()?;
        Some(Event {
            event: event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".into()),
            data,
            id: self.last_id.clone(),
            retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut parser = SseParser::new(1 << 20);
        chunks
            .iter()
            .flat_map(|chunk| parser.feed(chunk).unwrap())
            .collect()
    }

    #[test]
    fn joins_multi_line_data_and_skips_comments() {
        let events = parse_all(&[b": ping\n\nevent: message\ndata: {\"a\":\ndata:  1}\nid: 7\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "{\"a\":\n 1}");
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[0].event, "message");
    }

    #[test]
    fn reassembles_events_split_at_every_byte() {
        let text =
            b"\xEF\xBB\xBFid: a\r\nevent: endpoint\r\ndata: /messages?x=1\r\n\r\ndata: two\r\r";
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        let events = parse_all(&chunks);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, "endpoint");
        assert_eq!(events[0].data, "/messages?x=1");
        assert_eq!(events[1].data, "two");
        // the id persists to later events
        assert_eq!(events[1].id.as_deref(), Some("a"));
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let events = parse_all(&[b"data: x\r", b"\n\r", b"\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "x");
    }

    #[test]
    fn event_without_data_is_not_dispatched_but_keeps_its_id() {
        let mut parser = SseParser::new(1024);
        assert!(parser.feed(b"id: 9\nretry: 10\n\n").unwrap().is_empty());
        assert_eq!(parser.last_event_id(), Some("9"));
    }

    #[test]
    fn overlong_line_is_an_error() {
        let mut parser = SseParser::new(8);
        assert_eq!(parser.feed(b"data: 0123456789"), Err(LineTooLong));
    }
}
