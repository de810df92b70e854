//! The fixture's `--stream ADDR` fetcher: a release streamed over raw TCP, so the master's
//! download bounds (deadline, cut transfers) are tested end to end without an HTTP fetcher in
//! the core's dependency graph. Each check connects to `ADDR` and reads one line,
//! `<sha256 hex> <length>\n`, then the release's bytes, read through the shared
//! [`BoundedBody`] (which names a transfer that ends short of `<length>` as truncated).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use upshift::fetch::body::BoundedBody;
use upshift::fetch::{Current, FetchError, Fetcher, Format, Origin, Release};

/// The head line's longest form, and how long it may take to arrive.
const HEAD_LIMIT: u64 = 256;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

pub struct StreamFetcher {
    addr: String,
    name: String,
}

impl StreamFetcher {
    pub fn new(addr: &str) -> StreamFetcher {
        StreamFetcher {
            addr: addr.to_string(),
            name: format!("stream:{addr}"),
        }
    }

    fn io(&self, source: std::io::Error) -> FetchError {
        FetchError::Io {
            what: format!("{}: reading the release head", self.name),
            source,
        }
    }
}

#[async_trait::async_trait]
impl Fetcher for StreamFetcher {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&mut self, current: &Current) -> Result<Option<Release>, FetchError> {
        let head = async {
            let mut conn = BufReader::new(TcpStream::connect(&self.addr).await?);
            let mut line = String::new();
            (&mut conn).take(HEAD_LIMIT).read_line(&mut line).await?;
            Ok::<_, std::io::Error>((conn, line))
        };
        let (conn, line) = match tokio::time::timeout(HEAD_TIMEOUT, head).await {
            Ok(r) => r.map_err(|e| self.io(e))?,
            Err(_) => return Err(self.io(std::io::ErrorKind::TimedOut.into())),
        };
        let mut words = line.split_whitespace();
        let (Some(sha256), Some(Ok(length))) = (words.next(), words.next().map(str::parse::<u64>))
        else {
            return Err(FetchError::Source(format!(
                "{}: not `<sha256> <length>`: {line:?}",
                self.name
            )));
        };
        let identity = format!("stream:{sha256}");
        if current.sha256.eq_ignore_ascii_case(sha256)
            || current.was_rejected(&identity, Some(sha256), None)
        {
            return Ok(None);
        }
        let body = BoundedBody::new(conn, self.name.clone()).expect_len(Some(length));
        Ok(Some(Release {
            identity,
            sha256: Some(sha256.to_string()),
            signature: None,
            size_hint: Some(length),
            format: Format::Raw,
            origin: Origin::Remote,
            body: Box::new(body),
            local_file: None,
            delta: None,
            version: None,
            source: None,
            rollout_percent: None,
        }))
    }
}
