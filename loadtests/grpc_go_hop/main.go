// grpc-go tools for loadtests/ only, not part of the sidecar; three modes of one binary:
//
//   - the hop (default; loadtests/grpc_hops.py): a bare gRPC pass-through proxy, what a
//     compiled hop costs on the same machine and load as the Python ones. Every method is
//     forwarded as raw bytes on one stream (unary calls included), with the client's
//     metadata (less the transport's keys), its deadline (the stream's context), the
//     upstream's headers, messages, trailers and status.
//   - `-serve-answer FILE` (loadtests/bench_grpc.py): a fixed-answer model server, the gRPC
//     counterpart of the HTTP benchmark's fast upstream: every unary call is answered with
//     the file's bytes, ServerReady with ready=true.
//   - `-load TARGET` (loadtests/bench_grpc.py): the open-loop generator, the same method as
//     loadtests/loadgen.py: call i starts at t0 + i/rate whatever the server does, on one
//     connection whose streams are never all busy at these rates, so its latency counts
//     from its start; how late the generator started it (its timer's jitter, or a stall of
//     its own) is the lag, reported apart. Prints one JSON object.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type raw struct{}

func (raw) Marshal(v any) ([]byte, error)   { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(d []byte, v any) error { *(v.(*[]byte)) = append([]byte(nil), d...); return nil }
func (raw) Name() string                    { return "proto" }

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "")
	upstream := flag.String("upstream", "", "")
	answer := flag.String("serve-answer", "", "serve: the file whose bytes answer every unary call")
	target := flag.String("load", "", "load: the host:port to call")
	method := flag.String("method", "/inference.GRPCInferenceService/ModelInfer", "load: the method")
	payload := flag.String("payload", "", "load: the file whose bytes are every call's message")
	rate := flag.Float64("rate", 500, "load: calls per second")
	duration := flag.Float64("duration", 10, "load: seconds")
	meta := flag.String("metadata", "", "load: key=value pairs, separated by newlines")
	flag.Parse()
	encoding.RegisterCodec(raw{})
	if *answer != "" {
		serve(*listen, *answer)
		return
	}
	if *target != "" {
		load(*target, *method, *payload, *rate, *duration, *meta)
		return
	}
	conn, err := grpc.NewClient(*upstream, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	handler := func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		md, _ := metadata.FromIncomingContext(ss.Context())
		md = md.Copy()
		for _, k := range []string{"user-agent", "te", "content-type", ":authority"} {
			delete(md, k)
		}
		ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ss.Context(), md))
		defer cancel()
		cs, err := conn.NewStream(ctx, desc, method)
		if err != nil {
			return err
		}
		go func() {
			for {
				var m []byte
				if err := ss.RecvMsg(&m); err != nil {
					cs.CloseSend()
					return
				}
				if err := cs.SendMsg(&m); err != nil {
					return
				}
			}
		}()
		hdr, err := cs.Header()
		if err == nil {
			ss.SendHeader(hdr)
		}
		for {
			var m []byte
			if err := cs.RecvMsg(&m); err != nil {
				ss.SetTrailer(cs.Trailer())
				if err == io.EOF {
					return nil
				}
				return err
			}
			if err := ss.SendMsg(&m); err != nil {
				return err
			}
		}
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(handler))
	log.Fatal(srv.Serve(lis))
}

var serverReady = []byte{0x08, 0x01} // ServerReadyResponse{ready: true}

func serve(listen, answerPath string) {
	answer, err := os.ReadFile(answerPath)
	if err != nil {
		log.Fatal(err)
	}
	handler := func(_ any, ss grpc.ServerStream) error {
		var m []byte
		if err := ss.RecvMsg(&m); err != nil {
			return err
		}
		out := answer
		if method, _ := grpc.MethodFromServerStream(ss); strings.HasSuffix(method, "/ServerReady") {
			out = serverReady
		}
		return ss.SendMsg(&out)
	}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		log.Fatal(err)
	}
	// The port on stdout: the benchmark asks for port 0 and reads which one it got.
	fmt.Println(lis.Addr().String())
	srv := grpc.NewServer(grpc.UnknownServiceHandler(handler))
	log.Fatal(srv.Serve(lis))
}

type report struct {
	LatenciesUs  []float64      `json:"latencies_us"`
	Errors       map[string]int `json:"errors"`
	ElapsedS     float64        `json:"elapsed_s"`
	LagMaxMs     float64        `json:"lag_max_ms"`
	CPUUsPerCall float64        `json:"loadgen_cpu_us_per_call"`
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func load(target, method, payloadPath string, rate, duration float64, meta string) {
	payload, err := os.ReadFile(payloadPath)
	if err != nil {
		log.Fatal(err)
	}
	var pairs []string
	for _, line := range strings.Split(meta, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			pairs = append(pairs, k, v)
		}
	}
	md := metadata.Pairs(pairs...)
	// One connection, as a client's channel (the Python generator's too).
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	call := func() error {
		ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), 10*time.Second)
		defer cancel()
		var out []byte
		in := payload
		return conn.Invoke(ctx, method, &in, &out)
	}
	if err := call(); err != nil { // connected and warm before the clock starts
		log.Fatal(err)
	}
	n := int(rate * duration)
	rep := report{LatenciesUs: make([]float64, 0, n), Errors: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	cpu0 := cpuSeconds()
	start := time.Now().Add(10 * time.Millisecond)
	lagMax := time.Duration(0)
	for i := 0; i < n; i++ {
		scheduled := start.Add(time.Duration(float64(i) / rate * 1e9))
		if d := time.Until(scheduled); d > 0 {
			time.Sleep(d)
		} else if -d > lagMax {
			lagMax = -d
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			started := time.Now()
			err := call()
			took := time.Since(started)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				rep.Errors[status.Code(err).String()]++
				return
			}
			rep.LatenciesUs = append(rep.LatenciesUs, float64(took.Nanoseconds())/1e3)
		}()
	}
	wg.Wait()
	rep.ElapsedS = time.Since(start).Seconds()
	rep.LagMaxMs = float64(lagMax.Nanoseconds()) / 1e6
	rep.CPUUsPerCall = 1e6 * (cpuSeconds() - cpu0) / float64(max(n, 1))
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		log.Fatal(err)
	}
}
