# On erase ($1 = 0), stop the service and the timer; an upgrade keeps them running.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl stop etcd-backupd.service etcd-backupd.timer etcd-backupd-once.service >/dev/null 2>&1 || :
fi
exit 0
