//! Printing benchmark numbers.

use std::time::Duration;

/// One line: mean, min and max of `v` (sorted in place).
pub fn stats(label: &str, v: &mut [Duration]) {
    if v.is_empty() {
        println!("{label:<34} no samples");
        return;
    }
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    println!(
        "{label:<34} mean {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms   (n={})",
        mean.as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
        v.len()
    );
}
