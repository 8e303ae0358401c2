# The user and group, before the files are installed (the config is root:etcd-backupd 0640).
getent group etcd-backupd >/dev/null || groupadd -r etcd-backupd
getent passwd etcd-backupd >/dev/null || \
    useradd -r -g etcd-backupd -d /var/lib/etcd-backupd -M -s /sbin/nologin \
        -c "etcd backups (etcd-backupd)" etcd-backupd
exit 0
