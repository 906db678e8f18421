#!/bin/sh
# Build the Debian package of peerlink from what `make release` built:
# `make install PREFIX=/usr` into a staging root, man pages gzipped, the
# maintainer scripts next to this file, then dpkg-deb. Run by `make deb`.
# Usage: build.sh OUT_DIR   (prints the path of the .deb it wrote)
set -eu
out=${1:?usage: build.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
for tool in dpkg-deb dpkg objdump; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "make deb: $tool not found (apt-get install dpkg-dev binutils)" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)
root="$out/root"
rm -rf "$root"
mkdir -p "$root"
make --no-print-directory -s -C "$repo" install DESTDIR="$root" PREFIX=/usr >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
# The newest glibc symbol version the binaries need is the libc6 they need.
glibc=$(objdump -T "$root/usr/bin/peerd" "$root/usr/bin/peerctl" |
    sed -n 's/.*GLIBC_\([0-9.]*\).*/\1/p' | sort -V | tail -n 1)
size=$(du -sk "$root/usr" | cut -f1)
mkdir -p "$root/DEBIAN"
sed -e "s/@VERSION@/$version-1/" -e "s/@ARCH@/$arch/" -e "s/@GLIBC@/$glibc/" \
    -e "s/@SIZE@/$size/" "$here/control" > "$root/DEBIAN/control"
for s in postinst prerm postrm; do install -m 0755 "$here/$s" "$root/DEBIAN/$s"; done
deb="$out/peerlink_${version}-1_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
rm -rf "$root"
echo "$deb"
