package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/daemon"
	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/internal/redact"
	"github.com/klp-agent/klp-agent/manifest"
)

func cmdCheckConfig(env *Env, args []string) error {
	fs := newFlags(env, "check-config", "check-config [--config PATH]")
	path := fs.String("config", config.DefaultPath, "main configuration file (drop-ins in config.d/ beside it)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	l, err := config.Load(*path)
	if err != nil {
		return err
	}
	kr, problems := daemon.Problems(*path, l)
	y, err := l.YAML()
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "# effective configuration from: %s\n%s", strings.Join(l.Files, ", "), y)
	fmt.Fprintf(env.Stdout, "# trusted keys (%d): %s\n", len(kr), strings.Join(kr.IDs(), ", "))
	if len(problems) > 0 {
		return fmt.Errorf("%w:\n  %s", config.ErrInvalid, strings.Join(problems, "\n  "))
	}
	return nil
}

func cmdExplain(env *Env, args []string) error {
	fs := newFlags(env, "explain", "explain [--config PATH] [--manifest FILE] [--at TIME]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	file := fs.String("manifest", "", "signed envelope file to explain instead of fetching manifest.url")
	at := fs.String("at", "", "evaluate the rollout at this RFC 3339 time instead of now")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	now := env.Now()
	if *at != "" {
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return fmt.Errorf("%w: --at: %w", errUsage, err)
		}
		now = t
	}
	h, err := daemon.LoadHost(*path)
	if err != nil {
		return err
	}
	var envelope []byte
	var shard *manifest.Source // the shard source, with manifest.shard_url
	source := *file
	trust := h.Trust
	if *file != "" {
		envelope, err = limitfile.Read(*file, int64(h.Config.Manifest.MaxSize))
		if err != nil {
			return err
		}
	} else {
		if h.Config.Manifest.URL == "" {
			return fmt.Errorf("manifest.url is not set; pass --manifest FILE")
		}
		// Retries and their reasons go to stderr, so a slow explain says why.
		log, err := logging.New(logging.Options{Level: h.Config.Log.Level, Format: logging.FormatConsole, Stderr: env.Stderr})
		if err != nil {
			return err
		}
		client, err := h.Client(log)
		if err != nil {
			return err
		}
		src, err := h.Source(client, true)
		if err != nil {
			return err
		}
		if rt := src.Trust.Root; rt != nil {
			// Follow the published root chain as the daemon will (in memory:
			// only the daemon moves the trusted root).
			u, err := rt.Walk(env.Ctx, client, src.RootBase())
			if err != nil {
				return fmt.Errorf("root of trust beside %s: %w", src.RootBase(), err)
			}
			if err := rt.Commit(u); err != nil {
				return err
			}
			trust = src.Trust
		}
		res, err := src.Fetcher.Fetch(env.Ctx, manifest.Validators{})
		if err != nil {
			return err
		}
		envelope, source = res.Body, redact.URL(src.URL())
		if src.Shard {
			shard = src
		}
	}
	var v *manifest.Verified
	if shard != nil {
		// manifest.shard_url: this kernel's shard, against its own floor.
		v, err = trust.VerifyShard(envelope, now, shard.Store, h.Host.Kernel)
	} else {
		v, err = trust.Verify(envelope, now, manifest.ReadOnly(&manifest.FileVersionStore{Path: h.Layout().ManifestVersion()}))
	}
	if err != nil {
		return fmt.Errorf("manifest %s rejected: %w", source, err)
	}
	// URLs resolve against manifest.url, where the host fetches the
	// manifest from, whichever copy is explained (its shard's URL with
	// manifest.shard_url).
	base := h.Config.Manifest.URL
	if shard != nil {
		base = shard.URL()
	}
	if base == "" {
		if base, err = manifest.FileURL(*file); err != nil {
			return err
		}
	}
	d := manifest.Select(v.Manifest, h.Host, now, nil)
	writeDecisionAt(env, source, base, v, d)
	return nil
}

func writeDecision(env *Env, source string, v *manifest.Verified, d manifest.Decision) {
	writeDecisionAt(env, source, source, v, d)
}

// resolved is the URL a host fetches p from, its secrets masked.
func resolved(base string, p *manifest.Patch) string {
	u, err := manifest.ResolveURL(base, p)
	if err != nil {
		return "unresolvable: " + redact.Text(err.Error())
	}
	return redact.URL(u)
}

// writeDecisionAt prints d for a manifest shown as source, whose patch
// URLs resolve against base (the manifest's URL).
func writeDecisionAt(env *Env, source, base string, v *manifest.Verified, d manifest.Decision) {
	w := env.Stdout
	fmt.Fprintf(w, "host:     id %s, tier %q, kernel %s\n", d.Host.ID, d.Host.Tier, d.Host.Kernel)
	fmt.Fprintf(w, "manifest: %s version %d, expires %s, signed by %d key(s)\n", source, v.Version,
		v.Expires.UTC().Format(time.RFC3339), len(v.KeyIDs))
	writeAnnotations(w, "          ", v.Annotations)
	if d.Wanted != nil {
		fmt.Fprintf(w, "wanted:   %s level %d (%s)\n", d.Wanted.Name, d.Wanted.Level, resolved(base, d.Wanted))
	} else {
		fmt.Fprintf(w, "wanted:   no patch for %s\n", d.Host.Kernel)
	}
	fmt.Fprintf(w, "entries:  %d for this kernel, %d for other kernels\n\n", len(d.Entries), d.OtherKernels)
	if len(d.Entries) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LEVEL\tNAME\tCHOSEN\tURL\tREASON")
	for _, e := range d.Entries {
		mark := "-"
		if e.Chosen {
			mark = "yes"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", e.Patch.Level, e.Patch.Name, mark, resolved(base, e.Patch), e.Reason)
	}
	tw.Flush()
	for _, e := range d.Entries {
		if f := e.Patch.Fixes(); f != "" || len(e.Patch.Annotations) > 0 {
			fmt.Fprintf(w, "\n%s fixes: %s\n", e.Patch.ID(), orNone(f))
			writeAnnotations(w, "  ", e.Patch.Annotations)
		}
	}
}
