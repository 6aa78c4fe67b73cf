package testenv

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
)

// noRetry keeps the tests that probe a stopped Azurite fast.
var noRetry = policy.RetryOptions{MaxRetries: -1}

func TestModuleRoot(t *testing.T) {
	root := ModuleRoot()
	if root == "" {
		t.Fatal("ModuleRoot found no go.mod")
	}
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !strings.Contains(string(b), "module github.com/iotprov/iotprov") {
		t.Fatalf("ModuleRoot = %s, not this module (%v)", root, err)
	}
}

func TestFreePort(t *testing.T) {
	p := FreePort(t)
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("FreePort %d is not bindable: %v", p, err)
	}
	l.Close()
}

func TestAzuriteNotFound(t *testing.T) {
	t.Setenv(EnvAzuriteBin, filepath.Join(t.TempDir(), "no-azurite"))
	_, err := start("")
	if err == nil || !strings.Contains(err.Error(), "npm install") {
		t.Fatalf("err = %v, want one that says how to install azurite", err)
	}
}

func TestAzuriteFromEnvironment(t *testing.T) {
	if testing.Short() {
		t.Skip("Azurite skips under -short")
	}
	const cs = "DefaultEndpointsProtocol=http;AccountName=x;AccountKey=eA==;TableEndpoint=http://127.0.0.1:1/x;"
	t.Setenv(EnvStorage, cs)
	if got := Azurite(t); got != cs {
		t.Fatalf("Azurite = %q, want %s as is", got, EnvStorage)
	}
}

func clients(t *testing.T, cs string) (*aztables.ServiceClient, *azqueue.ServiceClient) {
	t.Helper()
	tc, err := aztables.NewServiceClientFromConnectionString(cs, &aztables.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: noRetry}})
	if err != nil {
		t.Fatal(err)
	}
	qc, err := azqueue.NewServiceClientFromConnectionString(cs, &azqueue.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: noRetry}})
	if err != nil {
		t.Fatal(err)
	}
	return tc, qc
}

func TestAzuriteAnswers(t *testing.T) {
	cs := Azurite(t)
	tc, qc := clients(t, cs)
	ctx := context.Background()
	if _, err := tc.CreateTable(ctx, "answers", nil); err != nil {
		t.Fatalf("table service: %v", err)
	}
	if _, err := qc.CreateQueue(ctx, "answers", nil); err != nil {
		t.Fatalf("queue service: %v", err)
	}
}

func TestStartAzuriteRestartKeepsData(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := StartAzurite(t, dir)
	if p.Dir != dir {
		t.Fatalf("Dir = %q, want %q", p.Dir, dir)
	}
	tc, qc := clients(t, p.ConnectionString)
	if _, err := tc.CreateTable(ctx, "kept", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.NewClient("kept").AddEntity(ctx, []byte(`{"PartitionKey":"p","RowKey":"r","V":"1"}`), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := qc.CreateQueue(ctx, "kept", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := qc.NewQueueClient("kept").EnqueueMessage(ctx, "hello", nil); err != nil {
		t.Fatal(err)
	}

	p.Stop()
	// Stopped means down: a storage outage as a client sees it.
	if _, err := tc.NewClient("kept").GetEntity(ctx, "p", "r", nil); err == nil {
		t.Fatal("Azurite still answers after Stop")
	}
	p.Stop() // idempotent

	before := p.ConnectionString
	p.Restart(t)
	if p.ConnectionString != before {
		t.Fatalf("Restart moved ports: %q -> %q", before, p.ConnectionString)
	}
	if _, err := tc.NewClient("kept").GetEntity(ctx, "p", "r", nil); err != nil {
		t.Fatalf("entity lost across restart: %v", err)
	}
	peek, err := qc.NewQueueClient("kept").PeekMessages(ctx, nil)
	if err != nil || len(peek.Messages) != 1 || *peek.Messages[0].MessageText != "hello" {
		t.Fatalf("queue message lost across restart: %v", err)
	}
}

func TestStopReallyStops(t *testing.T) {
	p := StartAzurite(t, "")
	pid := p.cmd.Process.Pid
	p.Stop()
	// The process is gone (reaped), not merely signalled: signal 0 probes for it.
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("azurite pid %d still exists after Stop", pid)
	}
	tc, _ := clients(t, p.ConnectionString)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := tc.CreateTable(ctx, "x", nil)
	var re *azcore.ResponseError
	if err == nil || errors.As(err, &re) {
		t.Fatalf("CreateTable after Stop: %v, want a connection error", err)
	}
}
