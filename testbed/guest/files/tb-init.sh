#!/bin/sh
# The guest's second stage (PID 1 on the root filesystem): mount what the kernel
# client needs, load the drivers of the NIC, the virtio ports and the iSCSI initiator,
# run the guest agent, and power off however it ends (the host reads its outcome
# from a virtio port; a guest that never gets here is stopped by the host).
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs -o size=8m tmpfs /run
mkdir -p /run/lock /run/lock/iscsi
mount -t tmpfs -o size=4m tmpfs /tmp
for m in virtio_net virtio_console iscsi_tcp sd_mod; do
    modprobe "$m" || echo "tb-init: modprobe $m failed"
done
mkdir -p /run/tb
PYTHONDONTWRITEBYTECODE=1 python3 -u /opt/testbed/boot.py /dev/vdb
echo "tb-init: guest agent exited with status $?"
sync
echo o > /proc/sysrq-trigger
sleep 10
