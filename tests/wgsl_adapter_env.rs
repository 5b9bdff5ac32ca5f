//! `WGPU_ADAPTER_NAME` picks the WGSL backend's adapter, as the README says: a name that
//! matches nothing is an error that lists the adapters there are, and the adapter wgpu finds
//! by default is found again by its own name. Each case runs `outlier-attn info` in a process
//! of its own, since the variable is read at start-up.
mod cli_common;
mod common;

use cli_common::{text, tool_with_env};

#[test]
fn wgpu_adapter_name_selects_the_adapter() {
    let default = text(&tool_with_env(&["info"], &[]).stdout);
    let Some(name) = default
        .lines()
        .find_map(|l| l.trim().strip_prefix("wgsl ("))
        .and_then(|rest| rest.split(", ").next())
        .map(str::to_string)
    else {
        common::skip_or_fail(
            "wgsl",
            &format!("`outlier-attn info` found no adapter:\n{default}"),
        );
        return;
    };

    let unknown =
        text(&tool_with_env(&["info"], &[("WGPU_ADAPTER_NAME", "no such adapter")]).stdout);
    assert!(
        unknown
            .contains("WGPU_ADAPTER_NAME=\"no such adapter\" matches none of the adapters found")
            && unknown.contains(&name),
        "{unknown}"
    );
    assert!(!unknown.contains("wgsl ("), "{unknown}");

    // Part of the name, in another case, finds it again.
    let part: String = name.chars().take(4).collect::<String>().to_uppercase();
    let chosen = text(&tool_with_env(&["info"], &[("WGPU_ADAPTER_NAME", &part)]).stdout);
    assert!(
        chosen.contains(&format!("wgsl ({name}")),
        "{part}: {chosen}"
    );
}
