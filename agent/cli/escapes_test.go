package cli

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rawMirror answers every request with statusLine, verbatim: what a hostile
// mirror or a man in the middle on plain http can send, which
// httptest.Server would not.
func rawMirror(t *testing.T, statusLine string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				c.Write([]byte(statusLine + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// A mirror's reason phrase holding a screen clear, a carriage return
// that would overwrite the line, and the one-byte CSI (0x9b) reaches
// poll's verdict, status, status --check, status --json and the daemon's
// status.json only as visible escapes.
func TestMirrorReasonPhraseIsEscaped(t *testing.T) {
	url := rawMirror(t, "HTTP/1.1 503 Busy\x1b[2J\rFAKE: up to date\x9b31m")
	dir, stateDir, cfg := daemonHost(t, "manifest:\n  url: "+url+"/manifest.json\n  retries: 0\n")
	logs := startDaemon(t, cfg, stateDir)
	out, code := runCode(t, t0, "poll", "--config", cfg, "--wait", "1m")
	if code != 1 {
		t.Fatalf("poll against a 503: exit %d\n%s", code, out)
	}
	outputs := map[string]string{"poll": out}
	for _, args := range [][]string{{"status"}, {"status", "--check"}, {"status", "--json"}} {
		o, _ := runCode(t, t0, append(args, "--config", cfg)...)
		outputs[strings.Join(args, " ")] = o
	}
	// The daemon rewrites its snapshot after the poll.
	var b []byte
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(string(b), "Busy") && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		b, _ = os.ReadFile(filepath.Join(dir, "status.json"))
	}
	outputs["status.json"] = string(b)
	outputs["journal (console)"] = logs.String()
	for name, o := range outputs {
		for _, bad := range []string{"\x1b", "\r", "\x9b", "\u009b"} {
			if strings.Contains(o, bad) {
				t.Errorf("%s: %q reached the output:\n%q", name, bad, o)
			}
		}
		// (The byte 0x9b alone is not UTF-8: JSON on the way, state.json,
		// makes it U+FFFD; the terminal sees no CSI either way.)
		if !strings.Contains(o, `Busy\x1b[2J\rFAKE: up to date`) && !strings.Contains(o, `Busy\\x1b[2J\\rFAKE: up to date`) {
			t.Errorf("%s: the reason phrase is not shown escaped:\n%s", name, o)
		}
	}
}

// A manifest source that reaches a root-only file (manifest.url naming it,
// or a symlink in a published tree) gets a parse error, and that error
// goes to the journal, status and the world-readable status.json: it says
// where the bytes stop being an envelope, never what they are. The old
// code quoted the JSON decoder's message: an unknown member's name, the
// payload type's value, the first character.
func TestUnverifiedBytesAreNotQuoted(t *testing.T) {
	for name, content := range map[string]string{
		"member name":  `{"s3cr3t_token":"x"}`,
		"payload type": `{"payloadType":"s3cr3t-value","payload":"","signatures":[]}`,
		"shadow line":  "s3cr3t:$6$hash:19000:0:99999:7:::\n",
		"string value": `{"payload": "s3cr3t", "payloadType": 5}`,
	} {
		t.Run(name, func(t *testing.T) {
			secret := filepath.Join(t.TempDir(), "shadow")
			if err := os.WriteFile(secret, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			dir, stateDir, cfg := daemonHost(t, "manifest:\n  url: file://"+secret+"\n")
			logs := startDaemon(t, cfg, stateDir)
			out, code := runCode(t, t0, "poll", "--config", cfg, "--wait", "1m")
			if code != 1 || !strings.Contains(out, "envelope") {
				t.Fatalf("poll of a non-envelope: exit %d\n%s", code, out)
			}
			outputs := map[string]string{"poll": out}
			for _, args := range [][]string{{"status"}, {"status", "--check"}, {"status", "--json"}} {
				o, _ := runCode(t, t0, append(args, "--config", cfg)...)
				outputs[strings.Join(args, " ")] = o
			}
			var b []byte
			for deadline := time.Now().Add(30 * time.Second); !strings.Contains(string(b), "envelope") && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
				b, _ = os.ReadFile(filepath.Join(dir, "status.json"))
			}
			outputs["status.json"] = string(b)
			outputs["journal (console)"] = logs.String()
			for where, o := range outputs {
				if strings.Contains(o, "s3cr3t") || strings.Contains(o, "'s'") {
					t.Errorf("%s quotes the file:\n%s", where, o)
				}
				if !strings.Contains(o, "envelope") {
					t.Errorf("%s does not say why:\n%s", where, o)
				}
			}
		})
	}
}
