//! The packaging in contrib/ keeps up with the router: the Grafana
//! dashboard and the Prometheus alerting rules name only metrics that
//! `/metrics` exposes ([`imrouter::metrics::metric_names`]), the rules pass
//! `promtool check rules` (from Debian's prometheus package, which
//! scripts/deps.sh installs), and the systemd unit sets what the router
//! needs to run and stop well.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn contrib(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(file)
}

fn read(file: &str) -> String {
    let path = contrib(file);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every `imrouter_[a-z0-9_]+` in `text` that does not continue a longer
/// identifier (the scan a regex would do, by hand).
fn metric_names_in(text: &str) -> Vec<String> {
    const PREFIX: &str = "imrouter_";
    let bytes = text.as_bytes();
    let is_name_byte = |byte: u8| matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'_');
    let continues = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':';
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(PREFIX) {
        let start = from + found;
        let mut end = start + PREFIX.len();
        while end < bytes.len() && is_name_byte(bytes[end]) {
            end += 1;
        }
        if end > start + PREFIX.len() && (start == 0 || !continues(bytes[start - 1])) {
            names.push(text[start..end].to_string());
        }
        from = end;
    }
    names
}

#[test]
fn the_metric_name_scan_finds_whole_names_only() {
    assert_eq!(
        metric_names_in(
            "sum(rate(imrouter_routes_busy_total{shard=\"0\"}[5m]))/imrouter_shards \
             my_imrouter_x imrouter_ imrouter_a1_b"
        ),
        [
            "imrouter_routes_busy_total",
            "imrouter_shards",
            "imrouter_a1_b"
        ]
    );
}

/// The `expr` of every target of every panel (rows' nested panels
/// included), with the title of its panel.
fn dashboard_exprs(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
    let panels = panels.as_array().expect("`panels` is an array");
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_string();
        if let Some(nested) = panel.get("panels") {
            dashboard_exprs(nested, out);
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of panel {title:?} has no expr"));
            assert!(
                !expr.trim().is_empty(),
                "a target of panel {title:?} has an empty expr"
            );
            out.push((title.clone(), expr.to_string()));
        }
    }
}

/// The `expr` of every rule in a Prometheus rules file: single-line
/// (plain or quoted) and block scalars (`expr: |`, `expr: >`).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        index += 1;
        let trimmed = line.trim_start();
        let key = trimmed.strip_prefix("- ").unwrap_or(trimmed).trim_start();
        let Some(rest) = key.strip_prefix("expr:") else {
            continue;
        };
        // The column of `expr`: a block scalar's lines are indented more.
        let indent = line.len() - key.len();
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = Vec::new();
            while index < lines.len() {
                let next = lines[index];
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                block.push(next.trim());
                index += 1;
            }
            exprs.push(block.join("\n").trim().to_string());
        } else {
            let unquoted = rest
                .strip_prefix('"')
                .and_then(|inner| inner.strip_suffix('"'))
                .or_else(|| {
                    rest.strip_prefix('\'')
                        .and_then(|inner| inner.strip_suffix('\''))
                })
                .unwrap_or(rest);
            exprs.push(unquoted.to_string());
        }
    }
    exprs
}

#[test]
fn the_rule_parser_reads_single_line_and_block_exprs() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 1m\n      - alert: B\n        expr: |\n          imrouter_a\n\n            > 1\n        for: 2m\n      - record: c\n        expr: \"imrouter_b\"\n";
    assert_eq!(
        rule_exprs(yaml),
        ["up == 0", "imrouter_a\n\n> 1", "imrouter_b"]
    );
}

/// Each of `exprs`' metric names, asserting that `/metrics` has it.
fn check_names<'a>(what: &str, exprs: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let known: BTreeSet<String> = imrouter::metrics::metric_names().into_iter().collect();
    let mut named = BTreeSet::new();
    let mut unknown = Vec::new();
    for expr in exprs {
        for name in metric_names_in(expr) {
            if !known.contains(&name) {
                unknown.push(format!("{name}    in: {}", expr.replace('\n', " ")));
            }
            named.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "{what} names metrics that /metrics does not expose \
         (imrouter::metrics::metric_names()):\n  {}",
        unknown.join("\n  ")
    );
    named
}

#[test]
fn the_dashboard_names_only_metrics_the_router_exposes() {
    let text = read("grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("contrib/grafana-dashboard.json is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() >= 10, "only {} panel targets", exprs.len());
    let named = check_names(
        "contrib/grafana-dashboard.json",
        exprs.iter().map(|(_, expr)| expr.as_str()),
    );
    assert!(
        named.len() >= 8,
        "the dashboard names only {} metrics: {named:?}",
        named.len()
    );
    // The template variables' queries too (e.g. label_values(...)).
    let mut queries = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        for key in ["definition", "query"] {
            match &variable[key] {
                serde_json::Value::String(query) => queries.push(query.clone()),
                serde_json::Value::Object(query) => {
                    if let Some(query) = query.get("query").and_then(|query| query.as_str()) {
                        queries.push(query.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    check_names(
        "contrib/grafana-dashboard.json (templating)",
        queries.iter().map(String::as_str),
    );
}

#[test]
fn the_alerts_pass_promtool_and_name_only_metrics_the_router_exposes() {
    let path = contrib("prometheus-alerts.yml");
    let yaml = read("prometheus-alerts.yml");

    let output = match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        Ok(output) => output,
        Err(error) => panic!(
            "cannot run promtool ({error}): it comes with Debian's prometheus package \
             (/usr/bin/promtool); scripts/deps.sh installs it"
        ),
    };
    assert!(
        output.status.success(),
        "promtool check rules {} failed:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let exprs = rule_exprs(&yaml);
    let rules = yaml
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("- alert:") || line.starts_with("- record:"))
        .count();
    assert_eq!(
        exprs.len(),
        rules,
        "one expr per rule (the scan missed some): {exprs:#?}"
    );
    for expr in &exprs {
        assert!(!expr.is_empty(), "an empty expr in {}", path.display());
    }
    let named = check_names(
        "contrib/prometheus-alerts.yml",
        exprs.iter().map(String::as_str),
    );
    assert!(
        named.len() >= 8,
        "the alerts name only {} metrics: {named:?}",
        named.len()
    );

    // Every alert says how bad it is and what it means.
    let alerts = yaml
        .lines()
        .filter(|line| line.trim_start().starts_with("- alert:"))
        .count();
    assert!(alerts >= 8, "only {alerts} alerts");
    for key in ["for:", "severity:", "summary:", "description:"] {
        let count = yaml
            .lines()
            .filter(|line| line.trim_start().starts_with(key))
            .count();
        assert_eq!(count, alerts, "{alerts} alerts but {count} `{key}` lines");
    }
}

#[test]
fn the_systemd_unit_sets_what_the_router_needs() {
    let unit = read("imrouter.service");
    // Settings, not comments.
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with(';'))
        .collect();
    let has = |prefix: &str| settings.iter().any(|line| line.starts_with(prefix));
    for prefix in [
        "ExecStart=/usr/local/bin/imrouter serve",
        "LimitMEMLOCK=",
        "LimitNOFILE=",
        "CPUAffinity=",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=",
        "ExecReload=",
    ] {
        assert!(
            has(prefix),
            "contrib/imrouter.service has no `{prefix}` line"
        );
    }
    // io_uring's syscalls must stay allowed: a filter, if any, names them.
    if let Some(filter) = settings
        .iter()
        .find(|line| line.starts_with("SystemCallFilter="))
    {
        for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
            assert!(
                filter.contains(call),
                "{filter} blocks {call}, which glommio needs"
            );
        }
    }
}
