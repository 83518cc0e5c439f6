package main

import (
	"math"
	"slices"
	"time"
)

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// pct is the p-th percentile of sorted durations.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[min(len(ds)-1, len(ds)*p/100)]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
