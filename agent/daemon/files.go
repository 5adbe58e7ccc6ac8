package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrUntrustedFile is a trust or credential file (trust.root, the keys dir
// and its *.pub keys, manifest.client_key) another user could change, or
// a private key others could read: the daemon refuses it, as sshd's
// StrictModes refuses such keys.
var ErrUntrustedFile = errors.New("file is not trusted")

// Kinds of file checkFile judges.
const (
	publicFile = iota // may be read by anyone; only root may change it
	secretFile        // only root may change it; others may not read it (its group may, as the configuration's 0640)
	trustDir          // a directory of keys: only root may add one
)

// checkFile refuses path (followed if a symlink: config management links
// files into /etc) unless it is owned by StateDirOwner (root) and not
// writable by group or others; a secret not readable by others either; a
// missing file is left to its reader to report. setting names the
// configuration key in the message.
func checkFile(setting, path string, kind int) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", setting, path, err)
	}
	bad := func(why string, a ...any) error {
		return fmt.Errorf("%w: %s %s %s", ErrUntrustedFile, setting, path, fmt.Sprintf(why, a...))
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	perm := fi.Mode().Perm()
	switch {
	case kind == trustDir && !fi.IsDir():
		return bad("is not a directory")
	case kind != trustDir && !fi.Mode().IsRegular():
		return bad("is not a regular file")
	case !ok:
		return bad("has no owner information")
	case int(st.Uid) != StateDirOwner:
		return bad("is owned by uid %d, not %d (chown %d)", st.Uid, StateDirOwner, StateDirOwner)
	case perm&0o022 != 0:
		return bad("has mode %04o, writable by group or others (chmod go-w)", perm)
	case kind == secretFile && perm&0o007 != 0:
		return bad("has mode %04o: a private key others can read (chmod o-rwx)", perm)
	}
	return nil
}

// checkKeysDir checks the keys dir and each *.pub key in it.
func checkKeysDir(dir string) error {
	if err := checkFile("trust.keys_dir", dir, trustDir); err != nil {
		return err
	}
	pubs, _ := filepath.Glob(filepath.Join(dir, "*.pub"))
	for _, p := range pubs {
		if err := checkFile("trust.keys_dir key", p, publicFile); err != nil {
			return err
		}
	}
	return nil
}
