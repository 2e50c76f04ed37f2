package receiver_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// Fetch a file from a server and learn why a name failed.
func ExampleFetch() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "hello.txt")
	os.WriteFile(src, []byte("hello, world\n"), 0o644)
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := sender.Listen(ctx, sender.Config{Endpoint: "tcp://127.0.0.1:0", Paths: []string{src}})
	if err != nil {
		fmt.Println(err)
		return
	}
	go srv.Serve(ctx)

	results, err := receiver.Fetch(ctx, receiver.Config{Endpoint: srv.Endpoint(), OutputDir: out, Timeout: 5 * time.Second},
		"hello.txt", "missing.txt")
	fmt.Println(results[0].Name, results[0].Size, results[0].Hash)
	fmt.Println("not found:", errors.Is(err, receiver.ErrNotFound))
	// Output:
	// hello.txt 13 623a5460d841b6d1c13d080e85500e0043fd4ba4a8ba9c1aa9b4f6e0d212276c
	// not found: true
}
