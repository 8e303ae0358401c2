use super::*;

#[test]
fn defaults() {
    let s = parse(&minimal()).unwrap();
    assert_eq!(s.schedule.schedule.text(), "0 */6 * * *");
    assert_eq!(s.schedule.schedule.jitter(), Duration::ZERO);
    assert!(s.schedule.catch_up);
    assert!(!s.schedule.skip_unchanged);
    assert_eq!(s.schedule.max_attempts, 3);
    assert!(s.metrics_textfile.is_none());
}

#[test]
fn every_key() {
    let text = format!(
        "{}[schedule]\ncron = \"*/10 * * * * *\"\ntimezone = \"America/New_York\"\njitter = \"5s\"\ncatch_up = false\nskip_unchanged = true\nmax_attempts = 5\n[metrics]\ntextfile = \"/var/lib/node_exporter/textfile_collector/etcd_backupd.prom\"\n",
        minimal()
    );
    let s = parse(&text).unwrap();
    assert_eq!(s.schedule.schedule.text(), "*/10 * * * * *");
    assert_eq!(s.schedule.schedule.timezone(), chrono_tz::America::New_York);
    assert_eq!(s.schedule.schedule.jitter(), Duration::from_secs(5));
    assert!(!s.schedule.catch_up && s.schedule.skip_unchanged);
    assert_eq!(s.schedule.max_attempts, 5);
    assert!(s.metrics_textfile.unwrap().ends_with("etcd_backupd.prom"));
}

#[test]
fn bad_values_name_their_key() {
    let p = one(&format!("{}[schedule]\ncron = \"every hour\"\n", minimal()));
    assert_eq!((p.key.as_str(), p.line), ("schedule.cron", Some(7)));
}
