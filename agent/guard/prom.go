package guard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// ErrPrometheus is a query Prometheus did not answer: the guard signs
// nothing, and the webhook asks Alertmanager to send the alert again.
var ErrPrometheus = errors.New("prometheus query failed")

// Sample is one series of an instant vector.
type Sample struct {
	Metric map[string]string
	Value  float64
}

// prometheus queries /api/v1/query.
type prometheus struct {
	base   string
	client *http.Client
}

// maxQueryResponse bounds an answer (a handful of series).
const maxQueryResponse = 4 << 20

// query runs an instant query and returns its vector.
func (p prometheus) query(ctx context.Context, q string) ([]Sample, error) {
	u := strings.TrimRight(p.base, "/") + "/api/v1/query?" + url.Values{"query": {q}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPrometheus, err)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPrometheus, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxQueryResponse+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPrometheus, err)
	}
	if len(body) > maxQueryResponse {
		return nil, fmt.Errorf("%w: answer over %d bytes", ErrPrometheus, maxQueryResponse)
	}
	var r struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%w: HTTP %d: %v", ErrPrometheus, resp.StatusCode, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%w: HTTP %d: %s: %s", ErrPrometheus, resp.StatusCode, r.ErrorType, r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("%w: result type %q, want vector", ErrPrometheus, r.Data.ResultType)
	}
	out := make([]Sample, 0, len(r.Data.Result))
	for _, s := range r.Data.Result {
		str, ok := s.Value[1].(string)
		if !ok {
			return nil, fmt.Errorf("%w: sample value %v", ErrPrometheus, s.Value[1])
		}
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: sample value %q", ErrPrometheus, str)
		}
		out = append(out, Sample{Metric: s.Metric, Value: v})
	}
	return out, nil
}
