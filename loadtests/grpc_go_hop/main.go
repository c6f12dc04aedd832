// A bare gRPC pass-through proxy in Go (grpc-go), for loadtests/grpc_hops.py only: what a
// compiled hop costs on the same machine and load as the Python ones. Every method is
// forwarded as raw bytes on one stream (unary calls included), with the client's metadata
// (less the transport's keys), its deadline (the stream's context), the upstream's headers,
// messages, trailers and status. Not part of the sidecar.
package main

import (
	"context"
	"flag"
	"io"
	"log"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
)

type raw struct{}

func (raw) Marshal(v any) ([]byte, error)   { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(d []byte, v any) error { *(v.(*[]byte)) = append([]byte(nil), d...); return nil }
func (raw) Name() string                    { return "proto" }

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "")
	upstream := flag.String("upstream", "", "")
	flag.Parse()
	encoding.RegisterCodec(raw{})
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
