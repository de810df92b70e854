//! Command-line options: each scenario declares the options it takes, with defaults, so that the
//! report can print the full command that produced it.

use std::collections::BTreeMap;
use std::time::Duration;

/// One option a scenario accepts.
pub struct OptSpec {
    /// `--name`.
    pub name: &'static str,
    /// The value's placeholder (`SECS`), or `None` for a flag.
    pub value: Option<&'static str>,
    /// The default value, shown in the help and in the resolved command.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// The parsed options: every option with a value has one (its default when not given).
pub struct Opts {
    values: BTreeMap<&'static str, String>,
    flags: Vec<&'static str>,
    specs: Vec<&'static OptSpec>,
}

impl Opts {
    /// `Err("")` means help was asked for.
    pub fn parse(args: &[String], specs: Vec<&'static OptSpec>) -> Result<Opts, String> {
        let mut values = BTreeMap::new();
        let mut flags = Vec::new();
        for spec in &specs {
            if let (Some(_), Some(d)) = (spec.value, spec.default) {
                values.insert(spec.name, d.to_string());
            }
        }
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "-h" || arg == "--help" {
                return Err(String::new());
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            let spec = specs
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| format!("unknown option {arg:?}"))?;
            match spec.value {
                Some(_) => {
                    let v = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| format!("{name} needs a value"))?,
                    };
                    values.insert(spec.name, v);
                }
                None => {
                    if inline.is_some() {
                        return Err(format!("{name} takes no value"));
                    }
                    if !flags.contains(&spec.name) {
                        flags.push(spec.name);
                    }
                }
            }
        }
        let opts = Opts {
            values,
            flags,
            specs,
        };
        // Check every typed value now, so a typo fails before minutes of building.
        for spec in &opts.specs {
            if spec.value.is_some() && opts.values.contains_key(spec.name) {
                opts.validate(spec)?;
            }
        }
        Ok(opts)
    }

    fn validate(&self, spec: &OptSpec) -> Result<(), String> {
        match spec.value {
            Some("SECS") => self.secs(spec.name).map(|_| ()),
            Some("SECS|0") => self.secs_or_zero(spec.name).map(|_| ()),
            Some("N") => self.count(spec.name).map(|_| ()),
            // `a|b|c`: one of those words.
            Some(choices) if choices.contains('|') => {
                let v = self.str(spec.name).unwrap_or("");
                if choices.split('|').any(|c| c == v) {
                    Ok(())
                } else {
                    Err(format!("{} must be one of {choices}, not {v:?}", spec.name))
                }
            }
            _ => Ok(()),
        }
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    pub fn secs(&self, name: &str) -> Result<Duration, String> {
        let v = self
            .str(name)
            .ok_or_else(|| format!("{name} is required"))?;
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{name}: {v:?} is not a positive number of seconds"))
    }

    /// Like [`secs`](Self::secs), but 0 is allowed (an option whose 0 turns something off).
    pub fn secs_or_zero(&self, name: &str) -> Result<Duration, String> {
        match self.str(name) {
            Some(v) if v.parse::<f64>().is_ok_and(|s| s == 0.0) => Ok(Duration::ZERO),
            _ => self.secs(name),
        }
    }

    pub fn count(&self, name: &str) -> Result<u64, String> {
        let v = self
            .str(name)
            .ok_or_else(|| format!("{name} is required"))?;
        v.parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{name}: {v:?} is not a positive whole number"))
    }

    /// The options as they were resolved, defaults included, for the report's command line.
    pub fn resolved(&self) -> String {
        let mut out = Vec::new();
        for spec in &self.specs {
            match spec.value {
                Some(_) => {
                    if let Some(v) = self.values.get(spec.name) {
                        out.push(format!("{} {}", spec.name, v));
                    }
                }
                None => {
                    if self.flags.contains(&spec.name) {
                        out.push(spec.name.to_string());
                    }
                }
            }
        }
        out.join(" ")
    }
}

/// Options every scenario takes.
pub static COMMON: [OptSpec; 5] = [
    OptSpec {
        name: "--runs",
        value: Some("N"),
        default: Some("3"),
        help: "repetitions; the summary gives medians and ranges",
    },
    OptSpec {
        name: "--duration",
        value: Some("SECS"),
        default: Some("30"),
        help: "length of each wrk run",
    },
    OptSpec {
        name: "--connections",
        value: Some("N"),
        default: Some("100"),
        help: "wrk keep-alive connections (-c)",
    },
    OptSpec {
        name: "--threads",
        value: Some("N"),
        default: Some("2"),
        help: "wrk threads (-t)",
    },
    OptSpec {
        name: "--keep",
        value: None,
        default: None,
        help: "keep the temporary directory (builds, server logs, wrk output)",
    },
];
