//! The machine the numbers come from: CPU, kernel, memory, and how busy it was.

use std::process::Command;

/// A description for the report.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub kernel: String,
    pub memory: String,
    pub load_at_start: String,
    pub date: String,
}

impl Machine {
    /// Reads `/proc` now.
    pub fn describe() -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let memory = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .map_or_else(String::new, |m| m.trim().to_owned());
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            memory,
            load_at_start: load_average(),
            date,
        }
    }
}

/// All CPUs' time so far and the part of it the host (hypervisor) gave to others, in clock ticks:
/// the first line of `/proc/stat` (its `steal` is the eighth number).
pub fn cpu_and_steal() -> (u64, u64) {
    parse_cpu_line(&read("/proc/stat"))
}

fn parse_cpu_line(stat: &str) -> (u64, u64) {
    let numbers: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers.iter().sum(), numbers.get(7).copied().unwrap_or(0))
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn steal_is_the_eighth_number_of_the_cpu_line() {
        let stat =
            "cpu  1527275 0 423488 947940 15608 0 133586 21500 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(
            super::parse_cpu_line(stat),
            (
                1_527_275 + 423_488 + 947_940 + 15_608 + 133_586 + 21_500,
                21_500
            )
        );
        assert_eq!(super::parse_cpu_line(""), (0, 0));
    }
}
