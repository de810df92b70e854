//! Socket activation's parsing and matching, on real sockets (the descriptors a service manager
//! would pass are made here and handed over the way `take_passed` would).

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixListener;

use super::*;

fn passed_tcp(name: Option<&str>) -> (Passed, SocketAddr, RawFd) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let fd = OwnedFd::from(l);
    let raw = fd.as_raw_fd();
    (inspect(fd, name.map(String::from)).unwrap(), addr, raw)
}

fn tcp(name: &str, addr: impl ToString) -> (String, ListenAddr) {
    (name.to_string(), ListenAddr::Tcp(addr.to_string()))
}

fn names(bound: &[BoundSocket]) -> Vec<&str> {
    bound.iter().map(|b| b.name.as_str()).collect()
}

#[test]
fn variables_are_for_this_pid_only() {
    assert_eq!(parse(None, None, None, 42).unwrap(), None);
    assert_eq!(parse(None, Some("2"), None, 42).unwrap(), None);
    assert_eq!(parse(Some("41"), Some("2"), None, 42).unwrap(), None);
    assert_eq!(
        parse(Some("42"), Some("2"), Some("web:unknown"), 42).unwrap(),
        Some(vec![Some("web".to_string()), None])
    );
    assert_eq!(
        parse(Some("42"), Some("2"), Some("just-one"), 42).unwrap(),
        Some(vec![None, None]),
        "names that do not match the count are ignored"
    );
    assert_eq!(
        parse(Some("42"), Some("0"), None, 42).unwrap(),
        Some(vec![])
    );
    for (pid, count, needle) in [
        ("x", Some("1"), "LISTEN_PID=\"x\""),
        ("42", None, "LISTEN_FDS is not set"),
        ("42", Some("two"), "LISTEN_FDS=\"two\""),
        ("42", Some("1000"), "at most"),
    ] {
        let err = parse(Some(pid), count, None, 42).unwrap_err().to_string();
        assert!(
            err.contains(needle) && err.starts_with("socket activation"),
            "{err}"
        );
    }
}

#[test]
fn only_listening_stream_sockets_are_accepted() {
    let (p, addr, _) = passed_tcp(Some("web"));
    assert_eq!(p.kind, SocketKind::Tcp);
    assert_eq!(
        p.local,
        Local::Inet {
            addr,
            v6only: false
        }
    );
    let flags = unsafe { libc::fcntl(p.fd.as_raw_fd(), libc::F_GETFL) };
    assert!(flags & libc::O_NONBLOCK != 0, "made non-blocking for tokio");
    let fd_flags = unsafe { libc::fcntl(p.fd.as_raw_fd(), libc::F_GETFD) };
    assert!(fd_flags & libc::FD_CLOEXEC != 0, "made close-on-exec");

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = inspect(OwnedFd::from(udp), Some("dns".into())).unwrap_err();
    assert!(err.to_string().contains("ListenStream="), "{err}");

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let conn = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let err = inspect(OwnedFd::from(conn), None).unwrap_err();
    assert!(err.to_string().contains("Accept=no"), "{err}");

    let file = std::fs::File::open("/dev/null").unwrap();
    let err = inspect(OwnedFd::from(file), None).unwrap_err();
    assert!(err.to_string().contains("is not a socket"), "{err}");
}

#[test]
fn configured_listeners_take_passed_sockets_by_name_then_address_and_bind_the_rest() {
    // "api" is named in LISTEN_FDNAMES though its configured address differs; "web" matches by
    // address; "admin" was not passed and is bound here; "metrics" was passed but not configured.
    let (api, _, api_fd) = passed_tcp(Some("api"));
    let (web, web_addr, web_fd) = passed_tcp(Some("app.socket"));
    let (metrics, _, metrics_fd) = passed_tcp(Some("metrics"));
    let addrs = vec![
        tcp("web", web_addr),
        tcp("api", "127.0.0.1:1"),
        tcp("admin", "127.0.0.1:0"),
    ];
    let bound = listeners(
        &addrs,
        vec![metrics, web, api],
        &UnixSocketOptions::default(),
    )
    .unwrap();
    assert_eq!(names(&bound), ["web", "api", "admin", "metrics"]);
    assert_eq!(bound[0].fd.as_raw_fd(), web_fd);
    assert_eq!(bound[1].fd.as_raw_fd(), api_fd);
    assert!(![web_fd, api_fd, metrics_fd].contains(&bound[2].fd.as_raw_fd()));
    assert_eq!(bound[3].fd.as_raw_fd(), metrics_fd);
    assert!(bound.iter().all(|b| b.kind == SocketKind::Tcp));
}

#[test]
fn unmatched_sockets_get_unique_names() {
    let (a, _, _) = passed_tcp(Some("app.socket"));
    let (b, b_addr, _) = passed_tcp(Some("app.socket"));
    let (c, _, _) = passed_tcp(None);
    let addrs = vec![tcp("main", "127.0.0.1:0")];
    let bound = listeners(&addrs, vec![a, b, c], &UnixSocketOptions::default()).unwrap();
    assert_eq!(bound[1].name, "app.socket");
    assert_eq!(
        bound[2].name,
        b_addr.to_string(),
        "a taken name falls back to the address"
    );
    assert!(bound[3].name.starts_with("127.0.0.1:"), "{}", bound[3].name);
}

#[test]
fn a_listener_neither_passed_nor_bindable_is_a_clear_error() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let (p, _, _) = passed_tcp(Some("web"));
    let addrs = vec![
        tcp("web", "127.0.0.1:1"),
        tcp("admin", busy.local_addr().unwrap()),
    ];
    let err = listeners(&addrs, vec![p], &UnixSocketOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"admin\"") && err.contains("not among the sockets") && err.contains("fd "),
        "{err}"
    );
}

#[test]
fn unix_sockets_match_by_path_and_are_neither_changed_nor_unlinked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ups-act-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let p = inspect(OwnedFd::from(l), None).unwrap();
    assert_eq!(p.local, Local::Path(path.clone()));
    let addrs = vec![(path.display().to_string(), ListenAddr::Unix(path.clone()))];
    // The mode is for sockets the master binds; the .socket unit sets a passed one's.
    let unix = UnixSocketOptions {
        mode: Some(0o666),
        ..Default::default()
    };
    let bound = listeners(&addrs, vec![p], &unix).unwrap();
    assert_eq!(bound[0].kind, SocketKind::Unix);
    assert!(bound[0].unlink_on_exit.is_none());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "a passed socket's mode was changed");
    drop(bound);
    assert!(path.exists(), "the socket file belongs to the .socket unit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dual_stack_socket_serves_an_ipv4_wildcard() {
    use socket2::{Domain, Socket, Type};
    use upshift_testkit::skip::skip_unavailable;
    let Ok(s) = Socket::new(Domain::IPV6, Type::STREAM, None) else {
        return skip_unavailable("IPv6", "no AF_INET6 socket", "UPSHIFT_REQUIRE_IPV6");
    };
    let any: SocketAddr = "[::]:0".parse().unwrap();
    if s.set_only_v6(false).is_err() || s.bind(&any.into()).is_err() || s.listen(8).is_err() {
        return skip_unavailable(
            "dual-stack IPv6",
            "cannot listen on [::] with IPV6_V6ONLY off",
            "UPSHIFT_REQUIRE_IPV6",
        );
    }
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    let p = inspect(OwnedFd::from(s), None).unwrap();
    let addrs = vec![tcp("web", format!("0.0.0.0:{port}"))];
    let bound = listeners(&addrs, vec![p], &UnixSocketOptions::default()).unwrap();
    assert_eq!(bound.len(), 1, "adopted, not bound beside it");
}
