# Sourced by .ci/docker-setup.sh and .ci/base-images.sh: where this machine's Debian archive is, read from its own apt
# sources, so that no mirror is written into the repository and a machine that uses another mirror uses it here too.
# Both formats are read: one-line (/etc/apt/sources.list, sources.list.d/*.list) and deb822 (sources.list.d/*.sources);
# deb-src entries, comments, "Enabled: no" stanzas and files of other names (*.disabled, *.save) are left out.

# Every binary source as "URI SUITE" lines, one per URI and suite.
apt_sources() {
  local root=${APT_SOURCES_ROOT:-/etc/apt}  # another root: the tests' fixtures
  local files=()
  [ -f "$root/sources.list" ] && files+=("$root/sources.list")
  for file in "$root"/sources.list.d/*.list "$root"/sources.list.d/*.sources; do
    [ -f "$file" ] && files+=("$file")
  done
  [ ${#files[@]} -gt 0 ] || return 0
  awk '
    function flush() {
      if (types ~ /(^| )deb( |$)/ && enabled !~ /^(no|false)$/) {
        n = split(uris, u, " "); m = split(suites, s, " ")
        for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print u[i], s[j]
      }
      types = uris = suites = enabled = ""
    }
    FNR == 1 { flush(); deb822 = FILENAME ~ /\.sources$/ }
    deb822 && /^#/ { next }  # a comment line, which does not end a stanza
    { sub(/#.*/, "") }
    !deb822 {
      if ($1 != "deb") next
      line = $0; sub(/^[ \t]*deb[ \t]+/, "", line); sub(/^\[[^]]*\][ \t]*/, "", line)
      split(line, f, /[ \t]+/); if (f[1] != "" && f[2] != "") print f[1], f[2]
      next
    }
    /^[ \t]*$/ { flush(); next }
    /^[^ \t]/ {
      key = tolower($1); value = $0; sub(/^[^:]*:[ \t]*/, "", value); gsub(/[ \t]+/, " ", value)
      if (key == "types:") types = value; else if (key == "uris:") uris = value
      else if (key == "suites:") suites = value; else if (key == "enabled:") enabled = tolower(value)
    }
    END { flush() }
  ' "${files[@]}"
}

# The URI of the first source of SUITE (e.g. bookworm, bookworm-security); fails when the machine has none.
apt_uri_of() {
  local uri
  uri=$(apt_sources | awk -v suite="$1" '$2 == suite { print $1; exit }')
  [ -n "$uri" ] || { echo "no apt source of the suite '$1' in ${APT_SOURCES_ROOT:-/etc/apt}/sources.list{,.d/*.list,.d/*.sources}" >&2; return 1; }
  echo "${uri%/}"
}

# The machine's Debian release (its codename: bookworm, trixie, ...).
debian_codename() {
  . /etc/os-release && echo "${VERSION_CODENAME:?/etc/os-release names no VERSION_CODENAME}"
}
