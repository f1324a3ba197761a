#!/bin/busybox sh
# /init of the reconciler test guest. Reports what the guest received on the serial console,
# one marker line each (see tools/guest/README.md), then idles; the ACPI power button shuts it
# down gracefully.
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /tmp /run /mnt/config
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

say() { echo "reconciler-guest: $*"; }
# cloud-init's own console lines (its stage banner and its default final message, the same
# words from 0.7 to 24.x), so that what reads them is tested against this guest
cloud_init() {
  echo "Cloud-init v. 22.4.2 $1 at $(date -u '+%a, %d %b %Y %H:%M:%S +0000')$2" \
    "Up $(cut -d' ' -f1 /proc/uptime) seconds$3"
}

say booted
cloud_init "running 'init-local'" "." "."
while read -r module; do
  insmod "/lib/modules/$module" 2>/dev/null
done </etc/modules.order

disk=""
for _ in $(seq 1 100); do
  for candidate in vda sda hda; do
    if [ -e "/sys/block/$candidate" ]; then disk=$candidate; break 2; fi
  done
  sleep 0.1
done
if [ -n "$disk" ]; then
  say "disk=$disk"
  say "disk-bytes=$(( $(cat /sys/block/$disk/size) * 512 ))"
else
  say "disk=none"
fi
# every disk (not CD-ROMs), the boot disk included; SCSI and SATA disks are probed in the
# background, so where there is such a controller give them a moment to appear
disks() { for d in /sys/block/vd* /sys/block/sd*; do [ -e "$d" ] && echo "${d##*/}"; done; }
bytes() { echo $(( $(cat "/sys/block/$1/size") * 512 )); }
if ls -d /sys/bus/virtio/drivers/virtio_scsi/virtio* /sys/bus/pci/drivers/ahci/0000:* \
    >/dev/null 2>&1; then
  sleep 1
fi
for d in $(disks); do say "disk $d bytes=$(bytes "$d")"; done

# A CD-ROM on an AHCI controller shows up a moment after the module loads (the SATA link is
# probed in the background): give it up to 5 s when there is such a controller.
if ls -d /sys/bus/pci/drivers/ahci/0000:* >/dev/null 2>&1; then
  for _ in $(seq 1 50); do
    ls -d /sys/block/sr* >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

config=""
for label in cidata CIDATA config-2 CONFIG-2; do
  device=$(findfs "LABEL=$label" 2>/dev/null) && { config=$label; break; }
done
# busybox's findfs does not look at CD-ROMs here: read their ISO 9660 volume label (32 bytes at
# offset 40 of the primary volume descriptor, sector 16) directly
if [ -z "$config" ]; then
  for cdrom in /dev/sr*; do
    [ -b "$cdrom" ] || continue
    label=$(dd if="$cdrom" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000')
    case "$label" in
      cidata | CIDATA | config-2 | CONFIG-2) device=$cdrom config=$label; break ;;
    esac
  done
fi
if [ -n "$config" ] && { mount -t iso9660 -o ro "$device" /mnt/config 2>/dev/null ||
    mount -t vfat -o ro "$device" /mnt/config 2>/dev/null; }; then
  say "config-drive=$config device=${device#/dev/}"
  for file in /mnt/config/*; do
    [ -f "$file" ] || continue
    say "config-file ${file##*/} sha256=$(sha256sum <"$file" | cut -d' ' -f1)"
  done
  meta=/mnt/config/meta-data
  [ -f "$meta" ] || meta=/mnt/config/openstack/latest/meta_data.json
  value() { sed -n -e "s/^[[:space:]]*\"\{0,1\}$1\"\{0,1\}[[:space:]]*:[[:space:]]*//p" "$meta" |
    head -n 1 | sed -e 's/[",]//g' -e "s/'//g" -e 's/[[:space:]]*$//'; }
  asked() { sed -n "s/.*reconciler-guest: $1 \\([0-9]*\\).*/\\1/p" /mnt/config/user-data \
    2>/dev/null | head -n 1; }
  say "instance-id=$(value instance-id)"
  given=$(value local-hostname)
  say "local-hostname=$given"
  [ -n "$given" ] && hostname "$given"
  # a test guest that fails at once every boot: its user-data asks for a kernel panic, which
  # pvpanic reports to the hypervisor
  if grep -q "reconciler-guest: panic" /mnt/config/user-data 2>/dev/null; then
    say panic
    echo c >/proc/sysrq-trigger
  fi
  # a test guest that hangs: its user-data asks it to feed the watchdog device for N seconds,
  # then to stop (the feeder killed: the device keeps counting, and fires)
  watchdog_seconds=$(asked watchdog)
  # a guest whose service comes up late, or stops after a while (for probe tests)
  services_after=$(asked services-after)
  services_stop_after=$(asked services-stop-after)
  grep -q "reconciler-guest: cloud-init-error" /mnt/config/user-data 2>/dev/null &&
    cloud_init_error=yes
  # a guest that writes an increasing counter to its first data disk (for soak tests: a disk
  # replaced or rolled back shows as a counter that goes backwards)
  grep -q "reconciler-guest: counter" /mnt/config/user-data 2>/dev/null && counter=vdb
else
  say "config-drive=none"
fi
say "hostname=$(hostname)"

# Every NIC is brought up; the first gets QEMU user-mode networking's guest address, so that
# a host port forwarded to the guest reaches the reply server below.
first=""
for interface in /sys/class/net/*; do
  name=${interface##*/}
  [ "$name" = lo ] && continue
  say "nic $name mac=$(cat "$interface/address")"
  ip link set dev "$name" up 2>/dev/null
  [ -z "$first" ] && first=$name
done
ip link set dev lo up
if [ -n "$first" ] && ip addr add 10.0.2.15/24 dev "$first" 2>/dev/null; then
  ip route add default via 10.0.2.2 dev "$first" 2>/dev/null
  say "ip $first 10.0.2.15"
fi
# Debian's qemu-ga on the guest agent's virtio port, where the machine has that channel
for port in /sys/class/virtio-ports/vport*; do
  [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
  mkdir -p /run/qemu-ga
  qemu-ga -m virtio-serial -p "/dev/${port##*/}" -t /run/qemu-ga -l /run/qemu-ga.log &
  say "guest-agent=${port##*/}"
done

# The guest's services: the reply server, /run/alive (for exec probes) and cloud-init's final
# message with its result file; at once, or `services-after` seconds after `ready`; stopped
# again `services-stop-after` seconds after they started
mkdir -p /www /run/cloud-init
echo "reconciler-guest $(hostname)" >/www/index.html
services() {
  httpd -f -p 80 -h /www &
  http=$!
  say "http=80"
  touch /run/alive
  errors=""
  if [ -n "$cloud_init_error" ]; then
    echo "$(date -u '+%Y-%m-%d %H:%M:%S'),000 - util.py[WARNING]: Running module scripts-user" \
      "(<module 'cloudinit.config.cc_scripts_user' from '/usr/lib/python3/dist-packages/" \
      "cloudinit/config/cc_scripts_user.py'>) failed"
    errors='"Running module scripts-user failed"'
  fi
  datasource="DataSourceNoCloud [seed=/dev/sr0][dsmode=net]"
  echo "{\"v1\": {\"datasource\": \"$datasource\", \"errors\": [$errors]}}" \
    >/run/cloud-init/result.json
  cloud_init finished ". Datasource $datasource. " ""
  if [ -n "$services_stop_after" ]; then
    ( sleep "$services_stop_after"; kill "$http"; rm -f /run/alive; say services-stopped ) &
  fi
}
[ -z "$services_after" ] && services

# The ACPI power button arrives as KEY_POWER (116) on the "Power Button" input device; each
# input_event is 24 bytes (16 of time, then type, code and value).
power_button=""
for device in /sys/class/input/event*; do
  if grep -q "Power Button" "$device/device/name" 2>/dev/null; then
    power_button=/dev/input/${device##*/}
    break
  fi
done
say "power-button=${power_button:-none}"
if [ -n "$watchdog_seconds" ] && [ -e /dev/watchdog ]; then
  watchdog -F -T 4 -t 1 /dev/watchdog &
  feeder=$!
  say "watchdog-fed seconds=$watchdog_seconds"
  ( sleep "$watchdog_seconds"; kill -9 "$feeder"; say watchdog-stopped ) &
fi
# opened before `ready`: evdev gives an event only to a reader that has the device open, and a
# press that came between `ready` and the first read would be lost (seen on a loaded host)
[ -n "$power_button" ] && exec 3<"$power_button"
say ready
[ -n "$services_after" ] && ( sleep "$services_after"; services ) &
# the counter: read back from the disk at each boot, then one more every second, each value
# written (fsync) before it is printed
if [ -n "$counter" ] && [ -b "/dev/$counter" ]; then
  (
    value=$(dd if="/dev/$counter" bs=512 count=1 2>/dev/null | tr -dc '0-9' | head -c 18 |
      sed 's/^0*//')
    value=${value:-0}
    say "counter-start $counter value=$value"
    while :; do
      value=$((value + 1))
      printf '%018d\n' "$value" | dd of="/dev/$counter" bs=512 count=1 conv=sync,fsync \
        2>/dev/null && say "counter=$value"
      sleep 1
    done
  ) &
fi

# disks plugged in or out while the guest runs, checked every second
(
  known=" $(disks | tr '\n' ' ')"
  while :; do
    sleep 1
    now=" $(disks | tr '\n' ' ')"
    for d in $now; do
      case "$known" in *" $d "*) ;; *) say "disk-added $d bytes=$(bytes "$d")" ;; esac
    done
    for d in $known; do
      case "$now" in *" $d "*) ;; *) say "disk-removed $d" ;; esac
    done
    known=$now
  done
) &

# One event per read (od into a pipe would buffer them); fields as 16-bit words: 8 of time,
# then type, code and the two halves of value.
while [ -n "$power_button" ]; do
  # shellcheck disable=SC2046
  set -- $(dd bs=24 count=1 <&3 2>/dev/null | od -An -v -tu2)
  if [ "$#" -ge 11 ] && [ "$9" = 1 ] && [ "${10}" = 116 ] && [ "${11}" = 1 ]; then
    say shutdown
    umount /mnt/config 2>/dev/null
    sync
    poweroff -f
  fi
done
while :; do sleep 3600; done
