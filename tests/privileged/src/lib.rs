//! Privileged test harness: cgroups, network namespaces, the IMDS stand-in (filled below).
