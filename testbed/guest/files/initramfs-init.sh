#!/bin/busybox sh
# The guest's first stage (PID 1 in the initramfs): the root filesystem's disk driver
# and ext4 are modules in Debian's kernel, so load them (the builder wrote their
# dependency order into /modules/order), mount the root disk and hand over to it.
# The kernel client boots /dev/vda into /sbin/tb-init; the students' disk image
# (testbed/guest/vmimage.py) names its root by label and its init on the kernel's
# command line: tb.root=LABEL=NAME (or a device), tb.init=PATH.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in $(/bin/busybox cat /modules/order); do
    /bin/busybox insmod "/modules/$m" || echo "tb-initramfs: insmod $m failed"
done
root=/dev/vda
init=/sbin/tb-init
for arg in $(/bin/busybox cat /proc/cmdline); do
    case "$arg" in
        tb.root=*) root="${arg#tb.root=}" ;;
        tb.init=*) init="${arg#tb.init=}" ;;
    esac
done
# disks appear as their drivers probe them: wait up to 10 s (an emulated SATA
# controller is the slowest)
dev=""
i=0
while [ -z "$dev" ] && [ $i -lt 200 ]; do
    case "$root" in
        LABEL=*) dev=$(/bin/busybox findfs "$root" 2>/dev/null) ;;
        *) [ -b "$root" ] && dev="$root" ;;
    esac
    [ -n "$dev" ] || /bin/busybox sleep 0.05
    i=$((i + 1))
done
if [ -z "$dev" ] || ! /bin/busybox mount -t ext4 -o rw "$dev" /newroot; then
    echo "tb-initramfs: cannot mount the root disk $root"
    echo o > /proc/sysrq-trigger
fi
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev 2>/dev/null || /bin/busybox umount /dev
exec /bin/busybox switch_root /newroot "$init"
