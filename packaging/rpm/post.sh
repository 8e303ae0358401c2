# The state dir, the journal catalog, systemd. Nothing is started or enabled: the service needs a
# filled-in config first. $1 is 1 on install, 2 or more on upgrade.
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/etcd-backupd.conf || :
else
    # No systemd: no service either, so no leftovers of root runs to give back.
    mkdir -p /var/lib/etcd-backupd && chown etcd-backupd:etcd-backupd /var/lib/etcd-backupd && chmod 0700 /var/lib/etcd-backupd
fi
journalctl --update-catalog >/dev/null 2>&1 || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 2 ]; then
        systemctl try-restart etcd-backupd.service >/dev/null 2>&1 || :
    fi
fi
exit 0
