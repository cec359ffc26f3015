#!/bin/busybox sh
# The guest's first stage (PID 1 in the initramfs): the root filesystem's disk driver
# and ext4 are modules in Debian's kernel, so load them (the builder wrote their
# dependency order into /modules/order), mount the root disk and hand over to it.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in $(/bin/busybox cat /modules/order); do
    /bin/busybox insmod "/modules/$m" || echo "tb-initramfs: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do /bin/busybox sleep 0.05; i=$((i + 1)); done
if ! /bin/busybox mount -t ext4 -o rw /dev/vda /newroot; then
    echo "tb-initramfs: cannot mount the root disk /dev/vda"
    echo o > /proc/sysrq-trigger
fi
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev 2>/dev/null || /bin/busybox umount /dev
exec /bin/busybox switch_root /newroot /sbin/tb-init
