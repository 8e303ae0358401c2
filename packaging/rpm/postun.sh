# RPM has no purge: the state dir and the user stay, as with most RPM services; /var/lib/etcd-backupd
# holds the local backups by default.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
