package klp

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os/exec"
	"testing"
)

// The guard hands on real xz output byte for byte, whatever its framing:
// many blocks, LZMA2 chunks compressed and stored, every check type.
func TestXZDictGuardPassesRealStreams(t *testing.T) {
	// Half random (stored chunks), half repetitive (LZMA chunks).
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 300<<10)
	for i := range data[:len(data)/2] {
		data[i] = byte(rng.Uint32())
	}
	for i := len(data) / 2; i < len(data); i++ {
		data[i] = "livepatch "[i%10]
	}
	for _, tt := range []struct {
		args   []string
		blocks int
	}{
		{[]string{"-2"}, 1},
		{[]string{"-9", "--check=sha256"}, 1},
		{[]string{"-1", "--check=none", "--block-size=7000"}, 44},
		{[]string{"-6", "--check=crc32", "--block-size=65536"}, 5},
		{[]string{"-0", "--check=crc64", "--block-size=100000"}, 4},
	} {
		args := tt.args
		cmd := exec.Command("xz", append([]string{"-c", "-T1"}, args...)...)
		cmd.Stdin = bytes.NewReader(data)
		xzd, err := cmd.Output()
		if err != nil {
			t.Fatalf("xz %v (install xz-utils): %v", args, err)
		}
		g := newXZDictGuard(bytes.NewReader(xzd))
		got, err := io.ReadAll(g)
		if err != nil || !bytes.Equal(got, xzd) || g.state != xzIndex || g.blocks != tt.blocks {
			t.Errorf("xz %v: guard read %d of %d bytes, %d blocks (want %d), reached the index %t: %v",
				args, len(got), len(xzd), g.blocks, tt.blocks, g.state == xzIndex, err)
		}
	}
}
