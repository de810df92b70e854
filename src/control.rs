//! The control protocol between a worker and its master: one short line per message on the socket
//! pair the master creates for each worker. The worker says it is ready or asks for a release
//! check; the master tells it to drain, or which build it runs now. EOF means the other side is
//! gone. Either side ignores a line it does not know, so that a message added later reaches an
//! older peer as nothing rather than as a fault.

use std::borrow::Cow;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Written by a worker on its control socket when `prog` is ready.
pub(crate) const READY_LINE: &[u8] = b"ready\n";
/// Written by a worker on its control socket to ask for a release check now.
pub(crate) const CHECK_LINE: &[u8] = b"check\n";
/// Written by the master on a worker's control socket to make it drain.
pub(crate) const DRAIN_LINE: &[u8] = b"drain\n";
/// Starts the line on which the master names the build it runs: `master <build id>\n`.
const MASTER_BUILD_PREFIX: &[u8] = b"master ";

/// The longest line (newline excluded) a reader accepts. Every message is a few bytes; the bound
/// keeps a confused or hostile peer from growing the other side's buffer without limit.
pub(crate) const MAX_LINE: usize = 256;

// The longest build id must fit one line, or a worker would drop the message as overlong.
const _: () = assert!(MASTER_BUILD_PREFIX.len() + crate::config::MAX_BUILD_ID_BYTES <= MAX_LINE);

/// What a worker tells its master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToMaster {
    /// `prog` serves: the master may retire the previous worker.
    Ready,
    /// Check the fetchers for a release now.
    CheckNow,
}

impl ToMaster {
    /// The line that carries this message, newline included.
    pub(crate) fn line(self) -> &'static [u8] {
        match self {
            ToMaster::Ready => READY_LINE,
            ToMaster::CheckNow => CHECK_LINE,
        }
    }

    /// The message a line (without its newline) carries, if it is one.
    pub(crate) fn decode(line: &[u8]) -> Option<Self> {
        [ToMaster::Ready, ToMaster::CheckNow]
            .into_iter()
            .find(|m| without_newline(m.line()) == line)
    }
}

/// What a master tells a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToWorker {
    /// Stop accepting, finish what is in flight, exit.
    Drain,
    /// The master now runs the build with this id (it re-executed itself into a new build while
    /// the worker kept running). Always a valid build id, so it fits one line.
    MasterBuild(String),
}

impl ToWorker {
    /// The line that carries this message, newline included.
    pub(crate) fn line(&self) -> Cow<'static, [u8]> {
        match self {
            ToWorker::Drain => Cow::Borrowed(DRAIN_LINE),
            ToWorker::MasterBuild(id) => {
                let mut line = MASTER_BUILD_PREFIX.to_vec();
                line.extend_from_slice(id.as_bytes());
                line.push(b'\n');
                Cow::Owned(line)
            }
        }
    }

    /// The message a line (without its newline) carries, if it is one. A `master` line whose
    /// build id this version would not accept is no message.
    pub(crate) fn decode(line: &[u8]) -> Option<Self> {
        if line == without_newline(DRAIN_LINE) {
            return Some(ToWorker::Drain);
        }
        let id = std::str::from_utf8(line.strip_prefix(MASTER_BUILD_PREFIX)?).ok()?;
        crate::config::valid_build_id(id).then(|| ToWorker::MasterBuild(id.to_string()))
    }
}

fn without_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// Splits a control stream into lines of at most [`MAX_LINE`] bytes.
///
/// A longer line is dropped with a warning and reading goes on at the next newline. Stopping
/// instead would look like EOF, which both sides take for the peer's death: the worker would
/// drain and the master would miss a later `ready` and kill a healthy worker at its ready
/// timeout. Dropping costs nothing, since no message is that long, and the bytes are discarded
/// as they arrive, so memory stays bounded either way.
pub(crate) struct Lines<R> {
    reader: R,
    line: Vec<u8>,
    /// The current line has gone past the bound: its bytes are skipped up to the newline.
    overlong: bool,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    pub(crate) fn new(reader: R) -> Self {
        Lines {
            reader,
            line: Vec::new(),
            overlong: false,
        }
    }

    /// The next line without its newline; `None` at EOF. A last line without a newline counts.
    ///
    /// Cancel-safe (it runs in `select!` loops): a partial line stays buffered in `self`, and
    /// input is consumed only once it has been copied there.
    pub(crate) async fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                if std::mem::take(&mut self.overlong) {
                    warn_overlong();
                }
                if self.line.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.line)));
            }
            let newline = buf.iter().position(|&b| b == b'\n');
            let chunk = &buf[..newline.unwrap_or(buf.len())];
            if !self.overlong {
                if self.line.len() + chunk.len() > MAX_LINE {
                    self.overlong = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            let used = newline.map_or(buf.len(), |i| i + 1);
            self.reader.consume(used);
            if newline.is_some() {
                if std::mem::take(&mut self.overlong) {
                    warn_overlong();
                    continue;
                }
                return Ok(Some(std::mem::take(&mut self.line)));
            }
        }
    }
}

fn warn_overlong() {
    tracing::warn!(
        max = MAX_LINE,
        "dropped a control message longer than the protocol allows"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn all_lines(input: &[u8], capacity: usize) -> Vec<Vec<u8>> {
        // A small buffer makes lines arrive in pieces, as they may from a socket.
        let mut lines = Lines::new(BufReader::with_capacity(capacity, input));
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn messages_encode_as_their_lines_and_decode_back() {
        for m in [ToMaster::Ready, ToMaster::CheckNow] {
            assert_eq!(m.line().last(), Some(&b'\n'));
            assert_eq!(ToMaster::decode(without_newline(m.line())), Some(m));
        }
        assert_eq!(ToMaster::Ready.line(), b"ready\n");
        assert_eq!(ToMaster::CheckNow.line(), b"check\n");
        assert_eq!(&*ToWorker::Drain.line(), b"drain\n");
        assert_eq!(ToWorker::decode(b"drain"), Some(ToWorker::Drain));
        // Each side only understands what is meant for it, and only whole lines.
        assert_eq!(ToMaster::decode(b"drain"), None);
        assert_eq!(ToWorker::decode(b"ready"), None);
        assert_eq!(ToMaster::decode(b"ready\n"), None);
        assert_eq!(ToMaster::decode(b"ready "), None);
        assert_eq!(ToMaster::decode(b""), None);
    }

    #[test]
    fn the_master_build_line_carries_the_id_up_to_its_limit() {
        let v2 = ToWorker::MasterBuild("v2".into());
        assert_eq!(&*v2.line(), b"master v2\n");
        assert_eq!(ToWorker::decode(b"master v2"), Some(v2));
        let spaced = ToWorker::MasterBuild("v1.4.2 (3f2a9c1)".into());
        assert_eq!(
            ToWorker::decode(without_newline(&spaced.line())),
            Some(spaced)
        );

        // The longest id fits one line, so a worker's reader keeps it whole.
        let longest = "é".repeat(crate::config::MAX_BUILD_ID_BYTES / 2);
        let line = ToWorker::MasterBuild(longest.clone()).line();
        assert!(line.len() - 1 <= MAX_LINE, "{} bytes", line.len());
        assert_eq!(
            ToWorker::decode(without_newline(&line)),
            Some(ToWorker::MasterBuild(longest))
        );

        // Not a master line, or an id this version would not accept: no message at all.
        let too_long = format!(
            "master {}",
            "x".repeat(crate::config::MAX_BUILD_ID_BYTES + 1)
        );
        for other in [
            &b"master"[..],
            b"master ",
            b"master  v2",
            b"master v2 ",
            b"master\tv2",
            b"masterv2",
            b"Master v2",
            b"master \xff\xfe",
            b"master v2\rx",
            b"drain ",
            b"build v2",
            too_long.as_bytes(),
        ] {
            assert_eq!(
                ToWorker::decode(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        assert_eq!(ToMaster::decode(b"master v2"), None);
    }

    #[tokio::test]
    async fn a_master_line_of_the_longest_id_is_read_whole() {
        let longest = "x".repeat(crate::config::MAX_BUILD_ID_BYTES);
        let line = ToWorker::MasterBuild(longest.clone()).line();
        let mut input = line.to_vec();
        input.extend_from_slice(DRAIN_LINE);
        let got = all_lines(&input, 16).await;
        let decoded: Vec<_> = got.iter().map(|l| ToWorker::decode(l)).collect();
        assert_eq!(
            decoded,
            vec![Some(ToWorker::MasterBuild(longest)), Some(ToWorker::Drain)]
        );
    }

    #[tokio::test]
    async fn lines_are_split_whatever_the_read_sizes() {
        let input = b"ready\ncheck\n\nlast";
        for capacity in [1, 2, 3, 7, 64] {
            let got = all_lines(input, capacity).await;
            let want: Vec<&[u8]> = vec![b"ready", b"check", b"", b"last"];
            assert_eq!(got, want, "buffer of {capacity}");
        }
    }

    #[tokio::test]
    async fn an_overlong_line_is_dropped_and_reading_goes_on() {
        let longest = vec![b'a'; MAX_LINE];
        let too_long = vec![b'b'; MAX_LINE + 1];
        let mut input = Vec::new();
        for part in [&longest[..], b"\n", &too_long, b"\nready\n", &too_long] {
            input.extend_from_slice(part);
        }
        for capacity in [1, 5, 300, 4096] {
            let got = all_lines(&input, capacity).await;
            // The overlong line at EOF, without a newline, is dropped too.
            assert_eq!(
                got,
                vec![longest.clone(), b"ready".to_vec()],
                "buffer of {capacity}"
            );
        }
    }

    #[tokio::test]
    async fn a_partial_line_survives_a_cancelled_read() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut lines = Lines::new(BufReader::new(rx));
        tokio::io::AsyncWriteExt::write_all(&mut tx, b"rea")
            .await
            .unwrap();
        let first = tokio::time::timeout(std::time::Duration::from_millis(20), lines.next_line());
        assert!(first.await.is_err(), "no whole line yet");
        tokio::io::AsyncWriteExt::write_all(&mut tx, b"dy\n")
            .await
            .unwrap();
        assert_eq!(lines.next_line().await.unwrap(), Some(b"ready".to_vec()));
    }
}
