package logging

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	_ "unsafe" // for go:linkname

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// journalSocket is go-systemd's unexported socket path, which journal.Send
// reads on every call. Pointing it at a test socket is the only way to run
// the real journal.Send without a journald; there is no API for it.
//
//go:linkname journalSocket github.com/coreos/go-systemd/v22/journal.journalSocket
var journalSocket string

// parseNative decodes one datagram of journald's native protocol
// (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/): "KEY=value\n", or for values
// containing newlines "KEY\n" + 64-bit little-endian length + value + "\n".
// It returns every value of every field in order.
func parseNative(d []byte) (map[string][]string, error) {
	out := map[string][]string{}
	for len(d) > 0 {
		nl := bytes.IndexByte(d, '\n')
		if nl < 0 {
			return nil, fmt.Errorf("unterminated line %q", d)
		}
		line := d[:nl]
		d = d[nl+1:]
		if k, v, ok := bytes.Cut(line, []byte("=")); ok {
			out[string(k)] = append(out[string(k)], string(v))
			continue
		}
		if len(d) < 8 {
			return nil, fmt.Errorf("field %q: short length", line)
		}
		n := binary.LittleEndian.Uint64(d[:8])
		d = d[8:]
		if uint64(len(d)) < n+1 || d[n] != '\n' {
			return nil, fmt.Errorf("field %q: bad binary value", line)
		}
		out[string(line)] = append(out[string(line)], string(d[:n]))
		d = d[n+1:]
	}
	return out, nil
}

// Not parallel: it swaps a package variable of go-systemd.
func TestJournalCoreRealSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "klpj") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "socket")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	old := journalSocket
	journalSocket = sock
	t.Cleanup(func() { journalSocket = old })

	var fallback bytes.Buffer
	l := zap.New(NewJournalCore(zapcore.DebugLevel, journal.Send, WithFallback(&fallback)),
		zap.AddCaller(), zap.AddStacktrace(zapcore.ErrorLevel)).Named("apply")
	l.With(zap.String("KLP_PATCH", "klp_0042"), zap.Int("KLP_LEVEL", 42)).Error("transition stalled",
		MessageID("8d45620c1a4348dbb17410da57c60c66"),
		zap.String("kernel.release", "6.1.0-31-amd64"),
		zap.Duration("waited", 15*time.Second),
		zap.Error(errors.New("EBUSY")),
		zap.String("blockers", "pid 12\npid 13"),
		zap.String("message", "user field named message"),
	)
	if fallback.Len() != 0 {
		t.Fatalf("send failed, fallback: %s", fallback.String())
	}

	buf := make([]byte, 1<<16)
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, _, err := conn.ReadFromUnix(buf)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseNative(buf[:n])
	if err != nil {
		t.Fatalf("parse %q: %v", buf[:n], err)
	}

	want := map[string]string{
		"MESSAGE":           "transition stalled",
		"PRIORITY":          "3",
		"MESSAGE_ID":        "8d45620c1a4348dbb17410da57c60c66",
		"KLP_PATCH":         "klp_0042",
		"KLP_LEVEL":         "42",
		"KERNEL_RELEASE":    "6.1.0-31-amd64",
		"WAITED":            "15s",
		"ERROR":             "EBUSY",
		"BLOCKERS":          "pid 12\npid 13", // binary framing
		"F_MESSAGE":         "user field named message",
		"SYSLOG_IDENTIFIER": "klp-agent",
		"LOGGER":            "apply",
	}
	for k, v := range want {
		if vs := got[k]; len(vs) != 1 || vs[0] != v {
			t.Errorf("%s = %q, want exactly [%q]", k, vs, v)
		}
	}
	for _, k := range []string{"CODE_FILE", "CODE_LINE", "CODE_FUNC", "STACK"} {
		if len(got[k]) != 1 || got[k][0] == "" {
			t.Errorf("%s missing: %q", k, got[k])
		}
	}
	if !strings.HasSuffix(got["CODE_FILE"][0], "/socket_test.go") {
		t.Errorf("CODE_FILE = %q", got["CODE_FILE"])
	}
	if !strings.Contains(got["STACK"][0], "\n") {
		t.Errorf("STACK lost its newlines: %q", got["STACK"])
	}
	for k := range got {
		if !journaldAccepts(k) {
			t.Errorf("field %q would be rejected by journald", k)
		}
	}

	// With the socket gone, the entry goes to the fallback instead.
	conn.Close()
	os.Remove(sock)
	l.Warn("journal went away")
	if out := fallback.String(); strings.Count(out, "\n") != 1 || !strings.Contains(out, "journal went away") {
		t.Errorf("fallback = %q, want one line", out)
	}
}
