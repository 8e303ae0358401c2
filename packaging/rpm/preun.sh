# On erase ($1 = 0), disable and stop the services and timers, as %systemd_preun does; an upgrade keeps them running.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable --now etcd-backupd.service etcd-backupd.timer etcd-backupd-drill.timer >/dev/null 2>&1 || :
    systemctl stop etcd-backupd-once.service etcd-backupd-drill.service >/dev/null 2>&1 || :
fi
exit 0
