//! Corefile parsing: CoreDNS's configuration syntax, restricted to the
//! directives Fibril implements (every directive the seeds' Corefiles use).
//!
//! [`parse`] never panics; every error names the line and the directive or
//! argument at fault. Placeholders such as `__PILLAR__CLUSTER__DNS__` (the
//! node-local-dns templates) are accepted as forward targets and resolved at
//! server start ([`ForwardTo::Placeholder`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use thiserror::Error;

/// A Corefile error: where and what.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("Corefile line {line}: {message}")]
pub struct CorefileError {
    pub line: usize,
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, CorefileError> {
    Err(CorefileError {
        line,
        message: message.into(),
    })
}

/// A parsed Corefile: its server blocks in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Corefile {
    pub servers: Vec<ServerBlock>,
}

/// `host:port` as written (`:9153`, `169.254.20.10:8080`); `host` empty
/// means every address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: Option<IpAddr>,
    pub port: u16,
}

impl HostPort {
    /// The socket address to bind (all IPv4 addresses when no host).
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.host
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            self.port,
        )
    }
}

/// One `zones:port { ... }` block.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerBlock {
    /// Line of the block's key.
    pub line: usize,
    /// Zones, lowercase, fully qualified (`cluster.local.`, `.`).
    pub zones: Vec<String>,
    pub port: u16,
    pub errors: bool,
    pub log: bool,
    pub debug: bool,
    pub health: Option<HealthConfig>,
    pub ready: Option<HostPort>,
    pub kubernetes: Option<KubernetesConfig>,
    pub prometheus: Option<HostPort>,
    pub forward: Option<ForwardConfig>,
    pub cache: Option<CacheConfig>,
    pub loop_detect: bool,
    pub reload: Option<ReloadConfig>,
    pub loadbalance: bool,
    /// Addresses to listen on (empty: every IPv4 address).
    pub bind: Vec<IpAddr>,
    /// `file` directives: zones served from zone files.
    pub files: Vec<FileConfig>,
}

impl ServerBlock {
    fn new(line: usize, zones: Vec<String>, port: u16) -> Self {
        Self {
            line,
            zones,
            port,
            errors: false,
            log: false,
            debug: false,
            health: None,
            ready: None,
            kubernetes: None,
            prometheus: None,
            forward: None,
            cache: None,
            loop_detect: false,
            reload: None,
            loadbalance: false,
            bind: Vec::new(),
            files: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub addr: HostPort,
    pub lameduck: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodsMode {
    Disabled,
    Insecure,
    Verified,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// Zones the plugin is authoritative for (default: the block's zones).
    pub zones: Vec<String>,
    pub pods: PodsMode,
    /// `None`: no fallthrough; `Some(empty)`: every zone.
    pub fallthrough: Option<Vec<String>>,
    pub ttl: u32,
    /// Restrict to these namespaces (empty: all).
    pub namespaces: Vec<String>,
}

/// A `forward` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTo {
    Addr(SocketAddr),
    /// A resolv.conf-style file whose `nameserver` lines are the upstreams.
    ResolvConf(String),
    /// A template placeholder (`__PILLAR__CLUSTER__DNS__`) resolved at start.
    Placeholder(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Random,
    RoundRobin,
    Sequential,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForwardConfig {
    /// The zone forwarded (`.` for everything).
    pub from: String,
    pub to: Vec<ForwardTo>,
    pub except: Vec<String>,
    pub max_concurrent: Option<usize>,
    pub force_tcp: bool,
    pub prefer_udp: bool,
    pub policy: Policy,
    pub max_fails: u32,
    pub health_check: Duration,
    pub expire: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Zones cached (default: the block's zones).
    pub zones: Vec<String>,
    pub success_capacity: usize,
    pub success_ttl: u32,
    pub success_min_ttl: u32,
    pub denial_capacity: usize,
    pub denial_ttl: u32,
    pub denial_min_ttl: u32,
    /// Zones whose positive answers are never cached.
    pub disable_success: Vec<String>,
    /// Zones whose negative answers are never cached.
    pub disable_denial: Vec<String>,
}

/// `file DBFILE [ZONES...] { reload DURATION }`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileConfig {
    /// The zone file as written (relative paths are resolved against the
    /// Corefile's directory when it is a file, else the working directory).
    pub path: String,
    /// Zones served from it (default: the block's zones). The file's
    /// `$ORIGIN` is each of them.
    pub zones: Vec<String>,
    /// How often the file is checked for changes (0: never). CoreDNS's
    /// default is 1m.
    pub reload: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReloadConfig {
    pub interval: Duration,
    pub jitter: Duration,
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Open,
    Close,
    Newline,
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, CorefileError> {
    let mut out = Vec::new();
    let mut line = 1usize;
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<(Tok, usize)>, line: usize| {
        if !word.is_empty() {
            out.push((Tok::Word(std::mem::take(word)), line));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                flush(&mut word, &mut out, line);
                out.push((Tok::Newline, line));
                line += 1;
            }
            '#' if word.is_empty() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push((Tok::Newline, line));
                        line += 1;
                        break;
                    }
                }
            }
            '"' if word.is_empty() => {
                let start = line;
                let mut closed = false;
                for c in chars.by_ref() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\n' => {
                            line += 1;
                            word.push(c);
                        }
                        _ => word.push(c),
                    }
                }
                if !closed {
                    return err(start, "unterminated quoted string");
                }
                out.push((Tok::Word(std::mem::take(&mut word)), start));
            }
            '{' if word.is_empty() => out.push((Tok::Open, line)),
            '}' if word.is_empty() => out.push((Tok::Close, line)),
            c if c.is_whitespace() => flush(&mut word, &mut out, line),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out, line);
    out.push((Tok::Newline, line));
    Ok(out)
}

/// A directive line: name, arguments and an optional block of sub-lines.
#[derive(Debug, Clone)]
struct Directive {
    line: usize,
    name: String,
    args: Vec<String>,
    block: Option<Vec<Directive>>,
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&(Tok, usize)> {
        self.toks.get(self.pos)
    }
    fn skip_newlines(&mut self) {
        while matches!(self.peek(), Some((Tok::Newline, _))) {
            self.pos += 1;
        }
    }
    fn last_line(&self) -> usize {
        self.toks.last().map(|t| t.1).unwrap_or(1)
    }

    /// Directives until the matching `}` (consumed).
    fn block(&mut self, depth: usize) -> Result<Vec<Directive>, CorefileError> {
        if depth > 8 {
            return err(
                self.peek().map(|t| t.1).unwrap_or(0),
                "blocks nested too deep",
            );
        }
        let mut out = Vec::new();
        loop {
            self.skip_newlines();
            let Some((tok, line)) = self.peek().cloned() else {
                return err(self.last_line(), "missing closing `}`");
            };
            match tok {
                Tok::Close => {
                    self.pos += 1;
                    return Ok(out);
                }
                Tok::Open => return err(line, "unexpected `{`"),
                Tok::Newline => {}
                Tok::Word(name) => {
                    self.pos += 1;
                    let mut args = Vec::new();
                    let mut block = None;
                    while let Some((t, l)) = self.peek().cloned() {
                        match t {
                            Tok::Word(w) => {
                                args.push(w);
                                self.pos += 1;
                            }
                            Tok::Newline => {
                                self.pos += 1;
                                break;
                            }
                            Tok::Open => {
                                self.pos += 1;
                                block = Some(self.block(depth + 1)?);
                                break;
                            }
                            Tok::Close => break,
                        }
                        let _ = l;
                    }
                    out.push(Directive {
                        line,
                        name,
                        args,
                        block,
                    });
                }
            }
        }
    }
}

// ---------------------------------------------------------------- helpers

/// Lowercase, fully qualified zone (`cluster.local` -> `cluster.local.`).
pub fn normalize_zone(z: &str) -> String {
    let z = z.trim().to_ascii_lowercase();
    let z = z.strip_prefix("dns://").unwrap_or(&z).to_string();
    if z.is_empty() || z == "." {
        ".".to_string()
    } else if z.ends_with('.') {
        z
    } else {
        format!("{z}.")
    }
}

fn valid_zone(z: &str) -> bool {
    z == "."
        || (z.len() <= 254
            && z.trim_end_matches('.').split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }))
}

/// Go-style duration: `5s`, `100ms`, `2m`, `1h30m`, or bare seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n_end == 0 {
            return None;
        }
        let n: f64 = rest[..n_end].parse().ok()?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u_end..];
        let secs = n * unit;
        if !secs.is_finite() || !(0.0..1e9).contains(&secs) {
            return None;
        }
        total += Duration::from_secs_f64(secs);
    }
    Some(total)
}

/// `:9153`, `9153`, `1.2.3.4:8080`, `[::1]:8080`.
fn parse_hostport(line: usize, s: &str, what: &str) -> Result<HostPort, CorefileError> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(HostPort {
            host: Some(sa.ip()),
            port: sa.port(),
        });
    }
    let port_s = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_s.parse::<u16>() {
        return Ok(HostPort { host: None, port });
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(HostPort {
            host: Some(ip),
            port: 0,
        });
    }
    err(
        line,
        format!("{what}: invalid address `{s}` (want [HOST]:PORT)"),
    )
}

fn num<T: std::str::FromStr>(line: usize, s: &str, what: &str) -> Result<T, CorefileError> {
    s.parse::<T>().map_err(|_| CorefileError {
        line,
        message: format!("{what}: invalid number `{s}`"),
    })
}

fn dur(line: usize, s: &str, what: &str) -> Result<Duration, CorefileError> {
    parse_duration(s).ok_or_else(|| CorefileError {
        line,
        message: format!("{what}: invalid duration `{s}`"),
    })
}

fn no_block(d: &Directive) -> Result<(), CorefileError> {
    if d.block.is_some() {
        return err(d.line, format!("{}: takes no block", d.name));
    }
    Ok(())
}

fn max_args(d: &Directive, n: usize) -> Result<(), CorefileError> {
    if d.args.len() > n {
        return err(
            d.line,
            format!("{}: too many arguments ({} > {n})", d.name, d.args.len()),
        );
    }
    Ok(())
}

fn zones_arg(line: usize, args: &[String], what: &str) -> Result<Vec<String>, CorefileError> {
    args.iter()
        .map(|a| {
            let z = normalize_zone(a);
            if valid_zone(&z) {
                Ok(z)
            } else {
                err(line, format!("{what}: invalid zone `{a}`"))
            }
        })
        .collect()
}

// ---------------------------------------------------------------- parse

/// Parses a Corefile. Never panics on any input.
pub fn parse(text: &str) -> Result<Corefile, CorefileError> {
    if text.len() > 1 << 20 {
        return err(1, "Corefile larger than 1 MiB");
    }
    let toks = lex(text)?;
    let mut p = Parser { toks, pos: 0 };
    let mut servers = Vec::new();
    loop {
        p.skip_newlines();
        let Some((tok, line)) = p.peek().cloned() else {
            break;
        };
        let mut keys = Vec::new();
        match tok {
            Tok::Word(_) => {}
            _ => return err(line, "expected a server block key such as `.:53`"),
        }
        while let Some((Tok::Word(w), _)) = p.peek().cloned() {
            for k in w.split(',').filter(|k| !k.is_empty()) {
                keys.push(k.to_string());
            }
            p.pos += 1;
        }
        match p.peek() {
            Some((Tok::Open, _)) => p.pos += 1,
            _ => return err(line, "server block key must be followed by `{`"),
        }
        let directives = p.block(0)?;
        let (zones, port) = parse_keys(line, &keys)?;
        servers.push(server_block(line, zones, port, directives)?);
    }
    if servers.is_empty() {
        return err(1, "no server blocks");
    }
    Ok(Corefile { servers })
}

fn parse_keys(line: usize, keys: &[String]) -> Result<(Vec<String>, u16), CorefileError> {
    let mut zones = Vec::new();
    let mut port: Option<u16> = None;
    for k in keys {
        let k = k.strip_prefix("dns://").unwrap_or(k);
        let (z, p) = match k.rsplit_once(':') {
            Some((z, p)) => (z, Some(num::<u16>(line, p, "server block port")?)),
            None => (k, None),
        };
        let p = p.unwrap_or(53);
        if let Some(prev) = port {
            if prev != p {
                return err(line, format!("server block mixes ports {prev} and {p}"));
            }
        }
        port = Some(p);
        let z = normalize_zone(z);
        if !valid_zone(&z) {
            return err(line, format!("invalid zone `{k}` in server block key"));
        }
        zones.push(z);
    }
    Ok((zones, port.unwrap_or(53)))
}

fn server_block(
    line: usize,
    zones: Vec<String>,
    port: u16,
    directives: Vec<Directive>,
) -> Result<ServerBlock, CorefileError> {
    let mut b = ServerBlock::new(line, zones, port);
    for d in directives {
        let once = |present: bool| {
            if present {
                err(
                    d.line,
                    format!("{}: given twice in one server block", d.name),
                )
            } else {
                Ok(())
            }
        };
        match d.name.as_str() {
            "errors" => {
                no_block(&d)?;
                b.errors = true;
            }
            "log" => {
                no_block(&d)?;
                b.log = true;
            }
            "debug" => {
                no_block(&d)?;
                max_args(&d, 0)?;
                b.debug = true;
            }
            "loop" => {
                no_block(&d)?;
                max_args(&d, 0)?;
                b.loop_detect = true;
            }
            "loadbalance" => {
                no_block(&d)?;
                max_args(&d, 1)?;
                if let Some(a) = d.args.first() {
                    if a != "round_robin" {
                        return err(d.line, format!("loadbalance: unknown policy `{a}`"));
                    }
                }
                b.loadbalance = true;
            }
            "bind" => {
                no_block(&d)?;
                if d.args.is_empty() {
                    return err(d.line, "bind: needs at least one address");
                }
                for a in &d.args {
                    let ip = a.parse::<IpAddr>().map_err(|_| CorefileError {
                        line: d.line,
                        message: format!("bind: invalid address `{a}` (interface names are not supported)"),
                    })?;
                    b.bind.push(ip);
                }
            }
            "reload" => {
                once(b.reload.is_some())?;
                no_block(&d)?;
                max_args(&d, 2)?;
                let interval = match d.args.first() {
                    Some(a) => dur(d.line, a, "reload")?,
                    None => Duration::from_secs(30),
                };
                let jitter = match d.args.get(1) {
                    Some(a) => dur(d.line, a, "reload")?,
                    None => Duration::from_secs(15),
                };
                if interval < Duration::from_secs(1) && !interval.is_zero() {
                    return err(d.line, "reload: interval must be at least 1s");
                }
                b.reload = Some(ReloadConfig { interval, jitter });
            }
            "ready" => {
                once(b.ready.is_some())?;
                no_block(&d)?;
                max_args(&d, 1)?;
                b.ready = Some(match d.args.first() {
                    Some(a) => parse_hostport(d.line, a, "ready")?,
                    None => HostPort {
                        host: None,
                        port: 8181,
                    },
                });
            }
            "prometheus" => {
                once(b.prometheus.is_some())?;
                no_block(&d)?;
                max_args(&d, 1)?;
                b.prometheus = Some(match d.args.first() {
                    Some(a) => parse_hostport(d.line, a, "prometheus")?,
                    None => HostPort {
                        host: Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
                        port: 9153,
                    },
                });
            }
            "health" => {
                once(b.health.is_some())?;
                max_args(&d, 1)?;
                let addr = match d.args.first() {
                    Some(a) => parse_hostport(d.line, a, "health")?,
                    None => HostPort {
                        host: None,
                        port: 8080,
                    },
                };
                let mut lameduck = Duration::ZERO;
                for s in d.block.iter().flatten() {
                    match s.name.as_str() {
                        "lameduck" if s.args.len() == 1 => {
                            lameduck = dur(s.line, &s.args[0], "health lameduck")?
                        }
                        "lameduck" => return err(s.line, "health lameduck: needs one duration"),
                        o => return err(s.line, format!("health: unknown property `{o}`")),
                    }
                }
                b.health = Some(HealthConfig { addr, lameduck });
            }
            "kubernetes" => {
                once(b.kubernetes.is_some())?;
                b.kubernetes = Some(kubernetes(&d, &b.zones)?);
            }
            "forward" => {
                once(b.forward.is_some())?;
                b.forward = Some(forward(&d)?);
            }
            "cache" => {
                once(b.cache.is_some())?;
                b.cache = Some(cache(&d, &b.zones)?);
            }
            "file" => {
                let f = file(&d, &b.zones)?;
                b.files.push(f);
            }
            other => {
                return err(
                    d.line,
                    format!("unsupported directive `{other}` (Fibril DNS supports errors, health, ready, kubernetes, file, prometheus, forward, cache, loop, reload, loadbalance, bind, log, debug)"),
                )
            }
        }
    }
    Ok(b)
}

fn kubernetes(d: &Directive, block_zones: &[String]) -> Result<KubernetesConfig, CorefileError> {
    let zones = if d.args.is_empty() {
        block_zones.to_vec()
    } else {
        zones_arg(d.line, &d.args, "kubernetes")?
    };
    let mut k = KubernetesConfig {
        zones,
        pods: PodsMode::Disabled,
        fallthrough: None,
        ttl: 5,
        namespaces: Vec::new(),
    };
    for s in d.block.iter().flatten() {
        if s.block.is_some() {
            return err(s.line, format!("kubernetes {}: takes no block", s.name));
        }
        match s.name.as_str() {
            "pods" => {
                k.pods = match s.args.as_slice() {
                    [m] if m == "disabled" => PodsMode::Disabled,
                    [m] if m == "insecure" => PodsMode::Insecure,
                    [m] if m == "verified" => PodsMode::Verified,
                    _ => {
                        return err(
                            s.line,
                            "kubernetes pods: want one of disabled, insecure, verified",
                        )
                    }
                }
            }
            "fallthrough" => k.fallthrough = Some(zones_arg(s.line, &s.args, "fallthrough")?),
            "ttl" => match s.args.as_slice() {
                [t] => {
                    let t: u32 = num(s.line, t, "kubernetes ttl")?;
                    if t > 3600 {
                        return err(s.line, format!("kubernetes ttl: {t} > 3600"));
                    }
                    k.ttl = t;
                }
                _ => return err(s.line, "kubernetes ttl: needs one number"),
            },
            "namespaces" => k.namespaces = s.args.clone(),
            // Accepted for compatibility; Fibril reads the cluster store.
            "endpoint" | "kubeconfig" | "noendpoints" => {}
            o => return err(s.line, format!("kubernetes: unsupported property `{o}`")),
        }
    }
    Ok(k)
}

fn file(d: &Directive, block_zones: &[String]) -> Result<FileConfig, CorefileError> {
    let Some(path) = d.args.first() else {
        return err(d.line, "file: needs a zone file");
    };
    let zones = if d.args.len() > 1 {
        zones_arg(d.line, &d.args[1..], "file")?
    } else {
        block_zones.to_vec()
    };
    for z in &zones {
        if !block_zones.iter().any(|b| in_zone(z, b)) {
            return err(
                d.line,
                format!("file: zone `{z}` is not inside the server block's zones"),
            );
        }
    }
    let mut f = FileConfig {
        path: path.clone(),
        zones,
        reload: Duration::from_secs(60),
    };
    for s in d.block.iter().flatten() {
        if s.block.is_some() {
            return err(s.line, format!("file {}: takes no block", s.name));
        }
        match (s.name.as_str(), s.args.as_slice()) {
            ("reload", [a]) => f.reload = dur(s.line, a, "file reload")?,
            ("reload", _) => return err(s.line, "file reload: needs one duration"),
            (o, _) => return err(s.line, format!("file: unsupported property `{o}`")),
        }
    }
    Ok(f)
}

fn forward_to(line: usize, s: &str) -> Result<Vec<ForwardTo>, CorefileError> {
    if s.starts_with("__") && s.ends_with("__") {
        return Ok(vec![ForwardTo::Placeholder(s.to_string())]);
    }
    if s.starts_with('/') {
        return Ok(vec![ForwardTo::ResolvConf(s.to_string())]);
    }
    let s2 = s.strip_prefix("dns://").unwrap_or(s);
    if s2.starts_with("tls://") || s.starts_with("tls://") || s.starts_with("https://") {
        return err(
            line,
            format!("forward: unsupported upstream scheme in `{s}`"),
        );
    }
    // Several space-separated in one token is not a thing; a single address.
    if let Ok(sa) = s2.parse::<SocketAddr>() {
        return Ok(vec![ForwardTo::Addr(sa)]);
    }
    if let Ok(ip) = s2.parse::<IpAddr>() {
        return Ok(vec![ForwardTo::Addr(SocketAddr::new(ip, 53))]);
    }
    err(line, format!("forward: invalid upstream `{s}`"))
}

fn forward(d: &Directive) -> Result<ForwardConfig, CorefileError> {
    if d.args.len() < 2 {
        return err(d.line, "forward: needs FROM and at least one TO");
    }
    let from = zones_arg(d.line, &d.args[..1], "forward")?.remove(0);
    let mut to = Vec::new();
    for a in &d.args[1..] {
        to.extend(forward_to(d.line, a)?);
    }
    if to.len() > 15 {
        return err(d.line, "forward: more than 15 upstreams");
    }
    let mut f = ForwardConfig {
        from,
        to,
        except: Vec::new(),
        max_concurrent: None,
        force_tcp: false,
        prefer_udp: false,
        policy: Policy::Random,
        max_fails: 2,
        health_check: Duration::from_millis(500),
        expire: Duration::from_secs(10),
    };
    for s in d.block.iter().flatten() {
        if s.block.is_some() {
            return err(s.line, format!("forward {}: takes no block", s.name));
        }
        let one = || match s.args.as_slice() {
            [a] => Ok(a.as_str()),
            _ => err(s.line, format!("forward {}: needs one argument", s.name)),
        };
        match s.name.as_str() {
            "force_tcp" => f.force_tcp = true,
            "prefer_udp" => f.prefer_udp = true,
            "max_concurrent" => {
                let n: usize = num(s.line, one()?, "forward max_concurrent")?;
                if n == 0 {
                    return err(s.line, "forward max_concurrent: must be > 0");
                }
                f.max_concurrent = Some(n);
            }
            "max_fails" => f.max_fails = num(s.line, one()?, "forward max_fails")?,
            "health_check" => {
                let a = s.args.first().map(String::as_str).unwrap_or("");
                f.health_check = dur(s.line, a, "forward health_check")?;
            }
            "expire" => f.expire = dur(s.line, one()?, "forward expire")?,
            "except" => f.except = zones_arg(s.line, &s.args, "forward except")?,
            "policy" => {
                f.policy = match one()? {
                    "random" => Policy::Random,
                    "round_robin" => Policy::RoundRobin,
                    "sequential" => Policy::Sequential,
                    o => return err(s.line, format!("forward policy: unknown policy `{o}`")),
                }
            }
            o => return err(s.line, format!("forward: unsupported property `{o}`")),
        }
    }
    if f.force_tcp && f.prefer_udp {
        return err(d.line, "forward: force_tcp and prefer_udp are exclusive");
    }
    Ok(f)
}

const DEFAULT_CAPACITY: usize = 9984;

fn cache(d: &Directive, block_zones: &[String]) -> Result<CacheConfig, CorefileError> {
    let mut c = CacheConfig {
        zones: block_zones.to_vec(),
        success_capacity: DEFAULT_CAPACITY,
        success_ttl: 3600,
        success_min_ttl: 5,
        denial_capacity: DEFAULT_CAPACITY,
        denial_ttl: 1800,
        denial_min_ttl: 5,
        disable_success: Vec::new(),
        disable_denial: Vec::new(),
    };
    let mut args = d.args.as_slice();
    if let Some(first) = args.first() {
        if let Ok(ttl) = first.parse::<u32>() {
            if ttl == 0 {
                return err(d.line, "cache: TTL must be > 0");
            }
            c.success_ttl = ttl;
            c.denial_ttl = ttl;
            args = &args[1..];
        }
    }
    if !args.is_empty() {
        c.zones = zones_arg(d.line, args, "cache")?;
    }
    for s in d.block.iter().flatten() {
        if s.block.is_some() {
            return err(s.line, format!("cache {}: takes no block", s.name));
        }
        match s.name.as_str() {
            "success" | "denial" => {
                let what = format!("cache {}", s.name);
                let (cap, ttl, min) = match s.args.as_slice() {
                    [cap] => (num::<usize>(s.line, cap, &what)?, None, None),
                    [cap, ttl] => (
                        num::<usize>(s.line, cap, &what)?,
                        Some(num::<u32>(s.line, ttl, &what)?),
                        None,
                    ),
                    [cap, ttl, min] => (
                        num::<usize>(s.line, cap, &what)?,
                        Some(num::<u32>(s.line, ttl, &what)?),
                        Some(num::<u32>(s.line, min, &what)?),
                    ),
                    _ => return err(s.line, format!("{what}: want CAPACITY [TTL [MINTTL]]")),
                };
                if cap == 0 || cap > 10_000_000 {
                    return err(s.line, format!("{what}: capacity {cap} out of range"));
                }
                if s.name == "success" {
                    c.success_capacity = cap;
                    if let Some(t) = ttl {
                        c.success_ttl = t;
                    }
                    if let Some(m) = min {
                        c.success_min_ttl = m;
                    }
                } else {
                    c.denial_capacity = cap;
                    if let Some(t) = ttl {
                        c.denial_ttl = t;
                    }
                    if let Some(m) = min {
                        c.denial_min_ttl = m;
                    }
                }
            }
            "disable" => {
                let Some((kind, zones)) = s.args.split_first() else {
                    return err(s.line, "cache disable: want success|denial [ZONES...]");
                };
                let zones = if zones.is_empty() {
                    c.zones.clone()
                } else {
                    zones_arg(s.line, zones, "cache disable")?
                };
                match kind.as_str() {
                    "success" => c.disable_success.extend(zones),
                    "denial" => c.disable_denial.extend(zones),
                    o => {
                        return err(
                            s.line,
                            format!("cache disable: want success or denial, got `{o}`"),
                        )
                    }
                }
            }
            o => return err(s.line, format!("cache: unsupported property `{o}`")),
        }
    }
    Ok(c)
}

/// Whether `name` (fully qualified, lowercase) is `zone` or below it.
pub fn in_zone(name: &str, zone: &str) -> bool {
    if zone == "." {
        return true;
    }
    name == zone || (name.ends_with(zone) && name[..name.len() - zone.len()].ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const COREDNS: &str = r#".:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload # 설정 변경시 자동 재적용. 적용 시간 최대 2분 소요
    loadbalance
}
"#;

    #[test]
    fn file_directive() {
        let cf = parse(
            "example.test:53 {\n file db.example.test {\n  reload 10s\n }\n}\n.:53 {\n file root.zone . \n}\n",
        )
        .unwrap();
        let f = &cf.servers[0].files[0];
        assert_eq!(f.path, "db.example.test");
        assert_eq!(f.zones, vec!["example.test."]);
        assert_eq!(f.reload, Duration::from_secs(10));
        assert_eq!(cf.servers[1].files[0].reload, Duration::from_secs(60));
        let e = parse("example.test {\n file\n}\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("example.test {\n file db other.test\n}\n").unwrap_err();
        assert!(e.message.contains("not inside"), "{e}");
        let e = parse("example.test {\n file db {\n  transfer to *\n }\n}\n").unwrap_err();
        assert_eq!(e.line, 3);
    }

    #[test]
    fn seed_coredns_corefile() {
        let c = parse(COREDNS).unwrap();
        assert_eq!(c.servers.len(), 1);
        let b = &c.servers[0];
        assert_eq!(b.zones, vec!["."]);
        assert_eq!(b.port, 53);
        assert!(b.errors && b.loop_detect && b.loadbalance);
        assert_eq!(b.health.as_ref().unwrap().lameduck, Duration::from_secs(5));
        assert_eq!(b.health.as_ref().unwrap().addr.port, 8080);
        assert_eq!(b.ready.as_ref().unwrap().port, 8181);
        let k = b.kubernetes.as_ref().unwrap();
        assert_eq!(
            k.zones,
            vec!["cluster.local.", "in-addr.arpa.", "ip6.arpa."]
        );
        assert_eq!(k.pods, PodsMode::Insecure);
        assert_eq!(
            k.fallthrough,
            Some(vec!["in-addr.arpa.".to_string(), "ip6.arpa.".to_string()])
        );
        assert_eq!(k.ttl, 30);
        assert_eq!(b.prometheus.as_ref().unwrap().port, 9153);
        let f = b.forward.as_ref().unwrap();
        assert_eq!(f.to, vec![ForwardTo::ResolvConf("/etc/resolv.conf".into())]);
        assert_eq!(f.max_concurrent, Some(1000));
        let ca = b.cache.as_ref().unwrap();
        assert_eq!(ca.success_ttl, 30);
        assert_eq!(ca.denial_ttl, 30);
        assert_eq!(ca.disable_success, vec!["cluster.local."]);
        assert_eq!(ca.disable_denial, vec!["cluster.local."]);
        assert!(b.reload.is_some());
    }

    #[test]
    fn seed_nodelocal_corefile() {
        let text = r#"cluster.local:53 {
    log # 추가된 항목
    debug # 추가된 항목
    errors
    cache {
            success 9984 30
            denial 9984 5
    }
    reload
    loop
    bind 169.254.20.10 10.96.0.10
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    health 169.254.20.10:8080
    }
in-addr.arpa:53 {
    errors
    cache 30
    reload
    loop
    bind 169.254.20.10 10.96.0.10
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    }
.:53 {
    errors
    cache 30
    reload
    loop
    bind 0.0.0.0
    forward . __PILLAR__UPSTREAM__SERVERS__
    prometheus :9253
    }
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.servers.len(), 3);
        let b = &c.servers[0];
        assert_eq!(b.zones, vec!["cluster.local."]);
        assert!(b.log && b.debug);
        assert_eq!(b.bind.len(), 2);
        let ca = b.cache.as_ref().unwrap();
        assert_eq!((ca.success_capacity, ca.success_ttl), (9984, 30));
        assert_eq!((ca.denial_capacity, ca.denial_ttl), (9984, 5));
        let f = b.forward.as_ref().unwrap();
        assert!(f.force_tcp);
        assert_eq!(
            f.to,
            vec![ForwardTo::Placeholder("__PILLAR__CLUSTER__DNS__".into())]
        );
        assert_eq!(
            b.health.as_ref().unwrap().addr,
            HostPort {
                host: Some("169.254.20.10".parse().unwrap()),
                port: 8080
            }
        );
        assert_eq!(c.servers[2].zones, vec!["."]);
    }

    #[test]
    fn unsupported_directive_names_line() {
        let e = parse(".:53 {\n  errors\n  rewrite name a b\n}\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("rewrite"), "{e}");
        let e = parse(".:53 {\n cache {\n  prefetch 10\n }\n}").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("prefetch"));
    }

    #[test]
    fn syntax_errors() {
        assert!(parse("").is_err());
        assert!(parse(".:53 {").is_err());
        assert!(parse(".:53 errors").is_err());
        assert!(parse(".:99999 {\n}").is_err());
        assert!(parse(".:53 {\n forward .\n}").is_err());
        assert!(parse(".:53 {\n forward . 1.2.3.4 {\n force_tcp\n prefer_udp\n }\n}").is_err());
        assert!(parse(".:53 {\n cache 30 {\n disable maybe\n }\n}").is_err());
        assert!(parse("}").is_err());
    }

    #[test]
    fn multiple_keys_and_forward_list() {
        let c = parse("example.org:1053 example.com:1053 {\n forward . 127.0.0.1:5300 10.0.0.1 {\n policy round_robin\n max_fails 3\n health_check 1s\n }\n}").unwrap();
        let b = &c.servers[0];
        assert_eq!(b.port, 1053);
        assert_eq!(b.zones, vec!["example.org.", "example.com."]);
        let f = b.forward.as_ref().unwrap();
        assert_eq!(f.to.len(), 2);
        assert_eq!(f.policy, Policy::RoundRobin);
        assert_eq!(f.max_fails, 3);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn zone_matching() {
        assert!(in_zone("a.cluster.local.", "cluster.local."));
        assert!(in_zone("cluster.local.", "cluster.local."));
        assert!(!in_zone("xcluster.local.", "cluster.local."));
        assert!(in_zone("anything.", "."));
    }
}
