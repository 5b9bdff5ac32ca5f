//! `outlier-attn info` and `outlier-attn parity`: the table, the JSON, the exit status.

mod cli_common;
use cli_common::{temp, text, tool};

#[test]
fn info_lists_the_reference_and_the_missing_backends() {
    let out = tool(&["info"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("reference (f64, CPU)"), "{stdout}");
    for backend in outlier_attn::discover().backends {
        assert!(stdout.contains(&backend.name()), "{stdout}");
    }
}

#[test]
fn parity_passes_writes_json_and_draws_no_bar_off_terminal() {
    let json = temp("parity.json");
    let out = tool(&[
        "parity",
        "--backend",
        "reference",
        "--filter",
        "/f32/",
        "--views",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // Captured stderr is no terminal: the progress bar must stay hidden.
    assert!(stderr.is_empty(), "stderr: {stderr}");
    assert!(stdout.contains("0 failed"), "{stdout}");

    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).ok();
    let cases = value["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    assert_eq!(value["summary"]["failed"], 0);
    assert_eq!(value["summary"]["total"].as_u64(), Some(cases.len() as u64));
    for case in cases {
        assert!(case["label"].as_str().unwrap().contains("/f32/"));
        assert_eq!(case["verdict"], "pass");
        let checks = case["checks"].as_array().unwrap();
        assert!(checks.iter().any(|c| c["output"] == "o"));
        assert!(
            checks
                .iter()
                .all(|c| c["max_err"].as_f64().unwrap() <= c["bound"].as_f64().unwrap())
        );
    }
    assert!(cases.iter().any(|c| c["views"] == true));
}

#[test]
fn parity_exits_non_zero_when_a_case_fails() {
    let json = temp("fail.json");
    let out = tool(&[
        "parity",
        "--filter",
        "Softmax/f32",
        "--inject-error",
        "0.01",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stderr.contains("failed the parity rule"), "{stderr}");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).ok();
    assert!(value["summary"]["failed"].as_u64().unwrap() > 0);
}

#[test]
fn an_error_below_the_bound_still_passes() {
    // The injected error scales with max|O|; 1e-9 of it is far inside every dtype's floor.
    let out = tool(&[
        "parity",
        "--filter",
        "Softmax/f32",
        "--inject-error",
        "1e-9",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn parity_refuses_an_unknown_backend_or_an_empty_filter() {
    let out = tool(&["parity", "--backend", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("backend `nosuch` is not available"));

    let out = tool(&["parity", "--filter", "no case has this"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no case matches"));
}
