//! Medians and ranges, and the formatting of figures.

/// The median (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn min(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::min)
}

pub fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::max)
}

/// The nearest-rank percentile `p` (0–100).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// `median (min–max)` with `fmt` for each figure; a single run shows just its value.
pub fn summary(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    match (median(values), min(values), max(values)) {
        (Some(m), Some(lo), Some(hi)) if values.len() > 1 => {
            format!("{} ({}–{})", fmt(m), fmt(lo), fmt(hi))
        }
        (Some(m), _, _) => fmt(m),
        _ => "–".into(),
    }
}

/// A whole number with thousands separators: `1,234,567`.
pub fn int(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or("?"))
        .collect();
    let out = groups.join(",");
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A byte count as `0 B`, `812 B`, `41.2 KiB`, `22.1 MiB` or `3.40 GiB`.
pub fn bytes(v: f64) -> String {
    const K: f64 = 1024.0;
    if v < K {
        format!("{v:.0} B")
    } else if v < K * K {
        format!("{:.1} KiB", v / K)
    } else if v < K * K * K {
        format!("{:.1} MiB", v / K / K)
    } else {
        format!("{:.2} GiB", v / K / K / K)
    }
}

/// Microseconds as `812 µs`, `1.25 ms` or `2.10 s`.
pub fn us(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.0} µs")
    } else if v < 1_000_000.0 {
        format!("{:.2} ms", v / 1e3)
    } else {
        format!("{:.2} s", v / 1e6)
    }
}

/// Milliseconds as `87 ms` (one decimal under 10 ms).
pub fn ms(v: f64) -> String {
    let v = if v.abs() < 0.05 { 0.0 } else { v };
    if v < 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// `min / **median** / p90 / max` in milliseconds, `–` where there is no value.
pub fn min_median_p90_max_ms(v: &[f64]) -> String {
    let f = |o: Option<f64>| o.map_or("–".into(), ms);
    format!(
        "{} / **{}** / {} / {}",
        f(min(v)),
        f(median(v)),
        f(percentile(v, 90.0)),
        f(max(v))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(summary(&[1.0, 5.0, 3.0], int), "3 (1–5)");
        assert_eq!(summary(&[7.0], int), "7");
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 90.0), Some(4.0));
    }

    #[test]
    fn formats() {
        assert_eq!(int(1234567.0), "1,234,567");
        assert_eq!(int(999.0), "999");
        assert_eq!(us(812.4), "812 µs");
        assert_eq!(us(1250.0), "1.25 ms");
        assert_eq!(ms(87.2), "87 ms");
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(23_261_064.0), "22.2 MiB");
    }
}
