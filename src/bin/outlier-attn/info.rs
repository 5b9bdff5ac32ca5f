//! `outlier-attn info`: the backends found and why the others are missing.

use crate::common::CliResult;

/// Prints each backend present (best first) with its description, then the missing ones.
pub fn info() -> CliResult {
    let discovery = outlier_attn::discover();
    println!("backends present (best first):");
    for backend in &discovery.backends {
        println!("  {}", backend.name());
        for line in backend
            .describe()
            .iter()
            .skip_while(|l| **l == backend.name())
        {
            println!("    {line}");
        }
    }
    if !discovery.missing.is_empty() {
        println!("not available:");
        for (name, why) in &discovery.missing {
            println!("  {name}: {why}");
        }
    }
    Ok(())
}
