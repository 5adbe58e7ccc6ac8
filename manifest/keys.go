package manifest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klp-agent/klp-agent/internal/limitfile"
)

// ErrKey marks unusable key material.
var ErrKey = errors.New("invalid key")

// KeyID is the lowercase hex sha256 of the key's PKIX DER encoding, so the
// same key has the same id whatever file it is stored in.
func KeyID(pub ed25519.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		// Only non-ed25519 sizes fail, which the type rules out.
		panic(fmt.Sprintf("marshal ed25519 public key: %v", err))
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// GenerateKey makes a new signing key and its PEM encodings (PKCS#8
// private, PKIX public: the formats openssl reads too).
func GenerateKey() (privPEM, pubPEM []byte, id string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, "", fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, "", fmt.Errorf("marshal private key: %w", err)
	}
	pder, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, nil, "", fmt.Errorf("marshal public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}),
		KeyID(pub), nil
}

// ParsePublicKey reads one PEM "PUBLIC KEY" block holding an ed25519 key.
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%w: no PEM PUBLIC KEY block", ErrKey)
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, fmt.Errorf("%w: trailing data after the PEM block", ErrKey)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKey, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %T is not ed25519", ErrKey, k)
	}
	return pub, nil
}

// ParsePrivateKey reads one PEM "PRIVATE KEY" (PKCS#8) ed25519 key.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%w: no PEM PRIVATE KEY block", ErrKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKey, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: %T is not ed25519", ErrKey, k)
	}
	return priv, nil
}

// Keyring is the set of trusted public keys by key id.
type Keyring map[string]ed25519.PublicKey

// IDs lists the key ids in a stable order.
func (k Keyring) IDs() []string {
	ids := make([]string, 0, len(k))
	for id := range k {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// LoadKeyring reads every *.pub file in dir. A malformed file is an error
// rather than skipped: a silently missing key could drop the keyring under
// its threshold without anyone noticing why.
func LoadKeyring(dir string) (Keyring, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.pub"))
	if err != nil {
		return nil, fmt.Errorf("load keys from %s: %w", dir, err)
	}
	return LoadKeyFiles(paths...)
}

// maxKeyFile bounds a PEM key file (one is some 110 bytes).
const maxKeyFile = 64 << 10

// LoadKeyFiles reads the named PEM public key files.
func LoadKeyFiles(paths ...string) (Keyring, error) {
	kr := make(Keyring, len(paths))
	for _, p := range paths {
		b, err := limitfile.Read(p, maxKeyFile) // a FIFO is refused, not waited on
		if err != nil {
			return nil, fmt.Errorf("load key: %w", err)
		}
		pub, err := ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("load key %s: %w", p, err)
		}
		kr[KeyID(pub)] = pub
	}
	return kr, nil
}

// Signer signs envelopes with one ed25519 key; it satisfies dsse.Signer.
type Signer struct{ key ed25519.PrivateKey }

// NewSigner wraps a private key.
func NewSigner(k ed25519.PrivateKey) *Signer { return &Signer{key: k} }

// LoadSigner reads a PEM private key file.
func LoadSigner(path string) (*Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load signing key: %w", err)
	}
	k, err := ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("load signing key %s: %w", path, err)
	}
	return NewSigner(k), nil
}

// Sign implements dsse.Signer.
func (s *Signer) Sign(_ context.Context, data []byte) ([]byte, error) {
	return ed25519.Sign(s.key, data), nil
}

// KeyID implements dsse.Signer.
func (s *Signer) KeyID() (string, error) {
	return KeyID(s.key.Public().(ed25519.PublicKey)), nil
}
