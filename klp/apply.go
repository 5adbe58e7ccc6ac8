package klp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// ErrDigest means a downloaded file does not match the pinned digest/size.
var ErrDigest = errors.New("digest mismatch")

// Want is what the signed manifest pins for one livepatch RPM.
type Want struct {
	KernelRelease string
	Name          string // livepatch/module name
	Level         int
	SHA256        string
	Size          int64
}

// Installer joins rpm and the controller: verify, install, load, enable.
type Installer struct {
	RPM        *RPM
	Controller *Controller
	Root       string // where rpm installs (the module path is read under it)
	CheckSig   bool   // also require an RPM signature from the rpm keyring
	// Hook, if set, is called after each step ("installed", "enabled");
	// crash-consistency tests kill the process there.
	Hook func(step string)
}

func (in *Installer) hook(step string) {
	if in.Hook != nil {
		in.Hook(step)
	}
}

// ApplyTiming breaks an apply down for status and benchmarks.
type ApplyTiming struct {
	Verify  time.Duration // digest + header + module checks
	Install time.Duration // rpm -U
	Timing                // load + transition
	Total   time.Duration
}

// ApplyResult is a finished apply.
type ApplyResult struct {
	Info   *RPMInfo
	Result Result
	Timing ApplyTiming
}

// VerifyFile checks a downloaded RPM against what the manifest pins and
// what this kernel can load: sha256 and size, the header (layout, kernel
// release, level, module name) and, when the payload is readable, the
// module's own modinfo (livepatch=Y, vermagic). Nothing is installed.
func VerifyFile(file string, want Want) (*RPMInfo, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", file, err)
	}
	defer f.Close()
	info, err := InspectRPMReader(f)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", file, err)
	}
	if info.Size != want.Size || info.SHA256 != want.SHA256 {
		return nil, fmt.Errorf("verify %s: %w: %d bytes sha256 %s, manifest pins %d bytes %s", file, ErrDigest, info.Size, info.SHA256, want.Size, want.SHA256)
	}
	if info.KernelRelease != want.KernelRelease {
		return nil, fmt.Errorf("verify %s: %w: built for %s, this host runs %s", file, ErrKernelMismatch, info.KernelRelease, want.KernelRelease)
	}
	if info.ModuleName != want.Name || info.Level != want.Level {
		return nil, fmt.Errorf("verify %s: package holds %s level %d, manifest says %s level %d", file, info.ModuleName, info.Level, want.Name, want.Level)
	}
	var ko bytes.Buffer
	switch err := ExtractModule(file, &ko); {
	case errors.Is(err, ErrUnsupportedPayload):
		// Checked after install instead, still before loading.
	case err != nil:
		return nil, fmt.Errorf("verify %s: %w", file, err)
	default:
		if err := checkKO(ko.Bytes(), want); err != nil {
			return nil, fmt.Errorf("verify %s: %w", file, err)
		}
	}
	return info, nil
}

func checkKO(ko []byte, want Want) error {
	mi, err := ModInfo(ko)
	if err != nil {
		return err
	}
	return CheckModule(mi, want.KernelRelease, want.Name)
}

// Apply verifies, installs and enables one livepatch RPM. The RPM stays
// installed on success so a reboot can re-apply it offline; on a module
// check failure after install nothing is loaded.
func (in *Installer) Apply(ctx context.Context, file string, want Want) (*ApplyResult, error) {
	t0 := time.Now()
	info, err := VerifyFile(file, want)
	if err != nil {
		return nil, err
	}
	if in.CheckSig {
		if err := in.RPM.CheckSig(ctx, file); err != nil {
			return nil, err
		}
	}
	res := &ApplyResult{Info: info}
	res.Timing.Verify = time.Since(t0)
	t1 := time.Now()
	if err := in.RPM.Install(ctx, file); err != nil {
		return res, err
	}
	res.Timing.Install = time.Since(t1)
	in.hook("installed")
	ko := filepath.Join(in.Root, info.ModulePath)
	b, err := readLimited(ko, 64<<20)
	if err != nil {
		return res, fmt.Errorf("apply %s: %w", want.Name, err)
	}
	if err := checkKO(b, want); err != nil {
		return res, fmt.Errorf("apply %s: installed module refused before loading: %w", want.Name, err)
	}
	res.Result, err = in.Controller.Enable(ctx, ko, want.Name)
	res.Timing.Timing = res.Result.Timing
	res.Timing.Total = time.Since(t0)
	if err == nil {
		in.hook("enabled")
	}
	return res, err
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}

// FileSHA256 hashes a file.
func FileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
